"""infergate.datastore."""
