"""infergate.flowcontrol."""
