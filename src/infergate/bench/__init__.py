"""infergate.bench."""
