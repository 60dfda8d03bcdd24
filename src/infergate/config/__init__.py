"""infergate.config."""
