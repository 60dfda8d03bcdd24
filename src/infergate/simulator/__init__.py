"""infergate.simulator."""
