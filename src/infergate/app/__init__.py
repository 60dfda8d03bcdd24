"""infergate.app."""
