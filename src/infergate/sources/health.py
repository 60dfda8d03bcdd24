"""Health of one endpoint as a small state machine: fail fast, recover only on evidence.

A single failed probe or scrape (connection refused, timeout, non-2xx, unparseable) takes the
endpoint out of rotation at once, because sending a request to a dead replica costs a retry or an
error, while skipping a live one for a moment costs almost nothing. Coming back needs ``rise``
consecutive successes, so a flapping replica does not oscillate in and out every probe.

Withdrawing requests already in flight there is a stronger verdict and waits for
``evict_after`` consecutive failed health probes (hysteresis): one slow probe on an overloaded
replica must not cut hundreds of healthy streams; the scraper announces that moment.

Both the health probe and a good metrics scrape are evidence of life, but the health path has the
last word: while the latest probe failed (vLLM answers ``/health`` with 503 when its engine died,
yet may still serve ``/metrics``), scrape successes do not count towards rejoining.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HealthTracker"]


@dataclass
class HealthTracker:
    """Tracks consecutive outcomes; ``record`` returns the new health when it changes, else None.

    A new endpoint starts healthy (it has not failed yet); it still needs fresh metrics before the
    datastore offers it to the scheduler.
    """

    rise: int = 2
    healthy: bool = True
    probe_ok: bool = True
    successes: int = 0
    failed_probes: int = 0
    """Consecutive failed health probes (scrapes do not count)."""

    def record(self, ok: bool, *, probe: bool) -> bool | None:
        """Record one scrape (``probe=False``) or health-probe (``probe=True``) outcome."""
        if probe:
            self.probe_ok = ok
            self.failed_probes = 0 if ok else self.failed_probes + 1
        if not ok:
            self.successes = 0
            if self.healthy:
                self.healthy = False
                return False
            return None
        if not self.probe_ok:
            return None
        self.successes += 1
        if not self.healthy and self.successes >= self.rise:
            self.healthy = True
            return True
        return None
