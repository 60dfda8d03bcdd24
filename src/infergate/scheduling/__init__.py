"""infergate.scheduling."""
