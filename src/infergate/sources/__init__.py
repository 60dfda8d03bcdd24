"""infergate.sources."""
