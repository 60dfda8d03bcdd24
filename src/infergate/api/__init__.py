"""infergate.api."""
