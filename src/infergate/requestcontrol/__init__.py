"""infergate.requestcontrol."""
