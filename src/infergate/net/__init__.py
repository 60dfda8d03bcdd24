"""Outbound HTTP/1.1 and the timers it runs on, for every layer that talks to model servers.

``http1_client`` is the keep-alive HTTP/1.1 client the built-in proxy forwards requests with and
the metrics scraper polls with (one pool per user, connections per host:port), ``host_gate`` the
per-host limit its pool queues requests on; ``deadline`` the one-timer-per-connection deadlines
both it and the inference listener use. This package imports nothing from infergate, so any layer
above may use it.
"""
