"""vLLM KV-cache events in the gateway: the wire format, the block index and the ZMQ subscriber.

Model servers announce which KV blocks they store and evict; the ``precise-prefix-cache-scorer``
reads this package's index to know, rather than guess, which endpoint holds a prompt's prefix.
"""
