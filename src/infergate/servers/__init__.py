"""infergate.servers."""
