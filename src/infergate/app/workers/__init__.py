"""Several worker processes behind one inference listener (``proxy.workers`` > 1).

The gateway process keeps everything that must exist once: the pool source, the metrics scraper,
the admin listener (``/metrics``, probes, live view). It binds the inference listener and starts
``proxy.workers`` worker processes that share it (:mod:`.child`); each runs the data plane with
its own scheduler, flow control and in-flight accounting. After every change of its datastore the
gateway process publishes a snapshot to the workers over a Unix socket pair (:mod:`.channel`);
the workers send back their in-flight counts and metric series (:mod:`.metrics`) and what their
picks credit (prefix-index credits, the predicted-latency scorer's accounting records), which the
gateway process passes on to the others (:mod:`.affinity`).
:class:`WorkerPool` is the data plane the gateway sees: it supervises the workers (a worker that
dies is restarted) and drains them on stop.
"""

from __future__ import annotations

from .supervisor import WorkerPool

__all__ = ["WorkerPool"]
