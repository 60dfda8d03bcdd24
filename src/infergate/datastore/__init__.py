"""infergate.datastore: in-memory state of one pool (endpoints, metrics snapshots, objectives, rewrites)."""

from infergate.datastore.store import Datastore

__all__ = ["Datastore"]
