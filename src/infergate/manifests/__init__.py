"""infergate.manifests."""
