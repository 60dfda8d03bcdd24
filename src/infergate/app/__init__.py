"""The composition root and the processes: what ``infergate up``, ``serve`` and ``epp`` run.

``gateway.Gateway(source, settings)`` builds every component through its ``from_settings`` and owns
start and stop; ``sources`` says where the pool comes from (manifests or a cluster); ``core`` wires
the request path (scheduler, flow control, Director, scraper) once for every mode; ``run``/``epp``
are the process entry points (banner, port fallback, live summary) on ``process`` (event loop,
signals) and ``logs``; ``fleet`` starts the simulated replicas of ``up``; ``tasks`` supervises
background loops.

May import: every gateway package below it (``dataplanes``, ``servers``, request control, ...).
Nothing but ``cli`` imports ``app``.
"""
