"""Saturation detection: is the pool too busy to take one more request right now?

The rule is the reference's utilisation detector (GIE ``utilization-detector``):

* per endpoint, ``score = max(waiting / queue_threshold, kv_cache_usage / kv_threshold)`` (and,
  when ``frontend_wait`` is set, the unreported term below, with the waiting queue counted against
  that term's allowance instead of ``queue_threshold``);
  an endpoint whose metrics are stale (never scraped, or older than ``staleness`` seconds) scores 1.0.
  By default (``kv_requires_queue``) the KV term counts only while requests wait on the endpoint: a
  vLLM server whose KV cache is 85 % used by the requests it runs, with nothing waiting, still takes
  the next request at once (it waits in the server's queue only when its blocks do not fit). Counting
  KV use alone made the pool look saturated under long shared prompts whenever the replicas were
  busy but keeping up, so the gateway queued requests the replicas could have started, released them
  to whichever replica had the least KV in use and lost their prefix affinity (seen in the twin:
  the SLO rate of a many-tenant workload halved with flow control on). ``kv_requires_queue=False``
  is the reference rule;
* the pool's saturation is, by default, the mean over the healthy endpoints of each score **capped at
  1.0** (``aggregation="capped-mean"``), so it reaches 1.0 only when every endpoint is saturated: one
  replica with a deep queue no longer makes the pool look full while another sits idle (seen in the
  overload benchmark with the reference's plain mean). ``"mean"`` is the reference's uncapped mean,
  ``"min"`` the lowest score. No healthy endpoint at all means saturation 1.0;
* the pool is saturated when its saturation is >= 1.0.

Between scrapes the detector also reacts to the gateway's own in-flight counts, so dispatch follows
requests finishing and starting without waiting up to one scrape interval. The first time it sees a
new metrics snapshot of an endpoint it remembers that endpoint's in-flight count as a baseline; from
then on the waiting queue it uses is ``max(0, waiting_at_scrape + in_flight_now - in_flight_baseline)``:
each request the gateway sent since the scrape is assumed to wait, each one that finished is assumed
to have let a waiting request start. With a waiting queue that holds while the server's batch is full,
which is exactly when saturation matters; the next scrape corrects any error. Where the gateway sees
requests start (a streamed answer's first token: its prefill is done, so it waits nowhere) faster
than they finish, each start counts instead: the in-flight change is lowered by the growth of the
in-flight requests seen to start (``Endpoint.in_flight_started``), so the correction is the smaller of
the in-flight change and the change in requests not yet seen to start. Under a burst requests
start long before any finishes, and counting only the finished ones held the queue until the next
scrape while the server's queue had drained (seen in the twin: a bursty workload's p90 TTFT 50-80 ms
above round-robin's; docs/benchmarks.md, "Requests seen to start"). An answer that is not streamed is
seen to start only when it finishes, as before. (Where the unreported
term below applies and the scrape showed nothing waiting, the requests sent since the scrape count
there instead, once.) KV-cache use is taken from the scrape as is.

A model server also holds requests its metrics do not show: vLLM's API server parses and tokenises
every request in one process before its engine counts it as waiting, and under a burst that process,
not the GPU, is the bottleneck (vLLM-calibration §1.5). A pool overloaded that way reports a few
running and nothing waiting while hundreds of requests queue in its frontends, first come first
served whatever their priority (seen in the overload benchmark: priority 20's p90 TTFT was 55 s with
flow control on, 74 s off). So, with ``frontend_wait`` set, an endpoint also scores
``unreported / allowance``: ``unreported`` is what the gateway has in flight there beyond what the
server reports running and waiting, ``allowance = max(queue_threshold, rate × frontend_wait)``
with ``rate`` the server's completions per second over the last ``RATE_WINDOW`` seconds (from its
finished-requests counter). A fast server legitimately holds many requests in its frontend (one
that completes 950 requests a second has ~30 of 32 concurrent requests there); measured in seconds
of its own throughput that is 30 ms, far below the allowance, while the overloaded pool's frontends
hold a minute of work. The waiting queue counts against the same allowance (``waiting /
allowance``): a fast server shows a few requests waiting at almost every scrape (they arrived
between two of its steps) and drains them in milliseconds, which a fixed threshold of 5 took for
a full server (the data-plane benchmark's replica at ~2,500 requests a second: 8-20 % of requests
held in the gateway, 1-3 % now); a slow server's allowance is the threshold, the reference rule.
Completions measure a frontend badly under a burst of long answers: a server finishing 3
requests a second (90-second answers) gets an allowance of 5 while its frontend hands on 60 a
second, so flow control metered each burst in as requests were seen to start and now and then
left a frontend idle (the twin's rollout-reasoning: 86 requests per replica at one instant).
So, judged with ``intake`` (:meth:`SaturationDetector.endpoint_score`; ``FlowCore`` asks for it
in a pool of one priority), the unreported requests count against ``max(allowance, intake ×
frontend_wait)``, ``intake`` being what the engine took in (the growth of ``running + waiting +
finished``) per second over scrape intervals at both ends of which its frontend held requests
(else the intake is the arrivals' pace, not the frontend's), weighted ``INTAKE_WEIGHT`` per
interval. The waiting queue still counts against the completions' allowance: the GPU drains it
no faster than it completes. Where priorities differ the hold orders who gets in, and the
completions' allowance stays for every band: letting every band fill the frontends cost the
twin's mixed-priorities 13 % of its SLO rate (standard requests went in ahead of later critical
ones), and the top band alone raised flash-crowd's p90 TPOT 7 % on paired streams. With
``--workers`` a worker sees only its own requests in flight, which rarely exceed what the server
reports, so the intake is seldom measured and the completions' allowance holds.
A server that exports no finished-requests counter (the Triton TensorRT-LLM
backend, SGLang before it had ``num_requests_total``) gets no such term, with one warning naming it;
nor does a decoder in prefill/decode disaggregation (``llm-d.ai/role``): its requests prefill on
another server first, which reports them.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Sequence
from typing import Literal

from infergate.types import DECODE_ROLES, ROLE_LABEL, Endpoint

__all__ = ["PREFILL_STAGE_ROLES", "RATE_MIN_FINISHED", "RATE_WINDOW", "Aggregation", "SaturationDetector"]

#: ``llm-d.ai/role`` values of endpoints that prefill (llm-d-router's prefill filter).
PREFILL_STAGE_ROLES = frozenset(
    {"prefill", "encode-prefill", "prefill-decode", "both", "encode-prefill-decode"}
)

Aggregation = Literal["capped-mean", "mean", "min"]

log = logging.getLogger(__name__)

#: Seconds of scrapes over which a server's completion rate is measured for ``frontend_wait``.
RATE_WINDOW = 2.0
#: Completions that make a shorter span's rate count: a fast server's rate is known within
#: milliseconds, a slow one's (completing in batches) only over the whole window.
RATE_MIN_FINISHED = 50
#: Weight of each new scrape interval in a server's intake rate (``frontend_intake``): a burst's
#: intake changes from one interval to the next as the frontend streams more or fewer answers.
INTAKE_WEIGHT = 0.2


class _Track:
    """What the detector remembers of one endpoint between calls (updated once per snapshot, so
    the per-request path only reads it)."""

    __slots__ = (
        "allowance",
        "finished",
        "in_flight",
        "intake_allowance",
        "intake_rate",
        "rate",
        "started",
        "taken_in",
        "updated_at",
        "was_held",
    )

    def __init__(self) -> None:
        self.updated_at = math.nan  # of the snapshot last seen (NaN: none yet)
        self.in_flight = 0  # the gateway's in-flight count when that snapshot was first seen
        self.started = 0  # and how many of those it had seen start
        # (updated_at, finished_requests) of recent snapshots, oldest first, for the completion rate
        self.finished: deque[tuple[float, float]] = deque()
        # completions per second, the last measured over remembered snapshots spanning RATE_WINDOW
        # seconds or RATE_MIN_FINISHED completions (0.0: none since the server started)
        self.rate = 0.0
        # the unreported term's allowance for this snapshot; 0.0: the term does not apply
        self.allowance = 0.0
        # requests the engine had taken in (running + waiting + finished) at the last snapshot
        # (NaN: unknown), whether its frontend then held requests, and the rate at which it takes
        # them in while it does (EWMA over such scrape intervals; 0.0: not measured yet)
        self.taken_in = math.nan
        self.was_held = False
        self.intake_rate = 0.0
        # the allowance judged with ``intake``: max(allowance, intake_rate x frontend_wait)
        self.intake_allowance = 0.0

    def _measure(self) -> None:
        if len(self.finished) < 2:
            return
        (t0, f0), (t1, f1) = self.finished[0], self.finished[-1]
        done, span = f1 - f0, t1 - t0
        if span > 0 and (done >= RATE_MIN_FINISHED or span >= RATE_WINDOW):
            self.rate = done / span

    def observe_intake(self, updated_at: float, taken_in: float, held: bool) -> None:
        """One more point of the engine's intake (``running + waiting + finished``): over a scrape
        interval at both ends of which its frontend held requests, the intake is the frontend's
        pace, not the arrivals' (see the module docstring). Called before :meth:`observe`, which
        moves ``updated_at`` on to this snapshot."""
        span = updated_at - self.updated_at if not math.isnan(self.updated_at) else 0.0
        if self.was_held and held and span > 0.0 and taken_in >= self.taken_in:
            sample = (taken_in - self.taken_in) / span
            rate = self.intake_rate
            self.intake_rate = sample if rate <= 0.0 else rate + INTAKE_WEIGHT * (sample - rate)
        elif taken_in < self.taken_in:
            self.intake_rate = 0.0  # the server restarted
        self.taken_in = taken_in
        self.was_held = held

    def observe(self, updated_at: float, in_flight: int, started: int, finished: float | None) -> None:
        """A new snapshot: new in-flight baseline, one more point of the finished counter.

        The detector sees snapshots only while requests come; after a pause longer than the window
        the points start again, so a server's rate is not averaged over the idle time before a
        burst (that made the rate ramp up over two seconds and held a fast server's requests back).
        Until the new points measure a rate, the one measured before the pause stands: the server
        completes as fast as it did, and without it the allowance fell to ``queue_threshold`` for
        the first 50 completions after every pause, so a fast server's sixth request in flight
        beyond its scrape waited for the next scrape (the data-plane benchmark: 3-5 % of requests
        held after its idle measurement). A server that restarted (its counter went back) or
        exports no counter is measured afresh.
        """
        self.updated_at = updated_at
        self.in_flight = in_flight
        self.started = started
        points = self.finished
        if finished is None:
            points.clear()
            self.rate = 0.0
            return
        if points and finished < points[-1][1]:
            points.clear()  # the server restarted: its counter went back
            self.rate = 0.0
        elif points and (updated_at <= points[-1][0] or updated_at - points[-1][0] > RATE_WINDOW):
            points.clear()  # the clock went back, or a pause: measure afresh, keep the last rate
        points.append((updated_at, finished))
        while len(points) > 2 and updated_at - points[1][0] >= RATE_WINDOW:
            points.popleft()
        self._measure()


class SaturationDetector:
    """Scores endpoints and the pool against the queue and KV-cache thresholds.

    Args:
        queue_threshold: waiting requests at which one endpoint counts as full (reference: 5).
        kv_threshold: KV-cache use (0..1) at which one endpoint counts as full (reference: 0.8).
        staleness: seconds after which an endpoint's metrics no longer count (it scores 1.0).
        aggregation: ``"capped-mean"`` (default), ``"mean"`` (reference) or ``"min"``.
        track_in_flight: correct the scraped queue by the gateway's in-flight changes since the scrape.
        connection_limit: upstream connections the data plane opens per endpoint (the built-in
            proxy's ``max_connections_per_endpoint``, 256); in-flight requests beyond it wait for a
            connection in the gateway and count as queued. ``None``: no such limit.
        kv_requires_queue: the KV term counts only while requests wait (see the module docstring).
        frontend_wait: seconds of its own throughput a server may hold beyond what its metrics
            report before it counts as full (see the module docstring); ``None``: not counted.
        frontend_intake: judged with ``intake``, that throughput is at least the frontend's
            intake (see the module docstring); False: the completions alone, always.
    """

    plugin_type = "utilization-detector"
    """The reference's name for this rule (the ``detector`` label of the stale-endpoint gauge)."""

    def __init__(
        self,
        *,
        queue_threshold: int = 5,
        kv_threshold: float = 0.8,
        staleness: float = 2.0,
        aggregation: Aggregation = "capped-mean",
        track_in_flight: bool = True,
        connection_limit: int | None = 256,
        kv_requires_queue: bool = True,
        frontend_wait: float | None = None,
        frontend_intake: bool = True,
    ) -> None:
        if queue_threshold <= 0:
            raise ValueError("queue_threshold must be > 0")
        if kv_threshold <= 0:
            raise ValueError("kv_threshold must be > 0")
        if staleness <= 0:
            raise ValueError("staleness must be > 0")
        if aggregation not in ("capped-mean", "mean", "min"):
            raise ValueError("aggregation must be 'capped-mean', 'mean' or 'min'")
        self.queue_threshold = queue_threshold
        self.kv_threshold = kv_threshold
        self.staleness = staleness
        self.aggregation: Aggregation = aggregation
        self.track_in_flight = track_in_flight
        if connection_limit is not None and connection_limit < 1:
            raise ValueError("connection_limit must be >= 1 or None")
        self.connection_limit = connection_limit
        self.kv_requires_queue = kv_requires_queue
        if frontend_wait is not None and frontend_wait <= 0:
            raise ValueError("frontend_wait must be > 0 or None")
        self.frontend_wait = frontend_wait
        self.frontend_intake = frontend_intake
        self._baselines: dict[str, _Track] = {}
        # endpoints already named in the warning that frontend_wait cannot apply to them
        self._uncounted: set[str] = set()

    def is_fresh(self, endpoint: Endpoint, now: float) -> bool:
        """Scraped at least once and no longer than ``staleness`` seconds ago."""
        updated = endpoint.metrics.updated_at
        return updated > 0.0 and now - updated <= self.staleness

    def effective_queue(self, endpoint: Endpoint) -> int:
        """The requests waiting for this endpoint, in the server and in the gateway's connection pool.

        ``max(0, waiting + min(in_flight, L) - min(in_flight_at_scrape, L)) + max(0, in_flight - L)``
        with ``L = connection_limit``. The first term is the server's scraped queue corrected by what
        the gateway sent (and saw finish) since the scrape, counting only requests that can hold a
        connection; the second counts requests waiting for an upstream connection inside the gateway:
        the proxy opens at most ``L`` connections per server, so the server cannot report them and
        every scrape would otherwise forget them.

        Where the unreported term applies (see the module docstring) and the scrape showed nothing
        waiting (the server's batch had room), requests sent since the scrape are counted there
        instead, against the server's throughput, and only the ones that finished correct the
        queue here: counting them twice, as waiting at the queue threshold too, made a fast server
        whose requests pass through its frontend in milliseconds look saturated whenever five more
        were in flight than at the scrape (the data-plane benchmark's replica: up to 20 % of
        requests held in the gateway's queue at 32 concurrent clients, 2-6 % now). Once a server
        reports a queue, what is sent after the scrape waits behind it and counts here; otherwise
        each gateway worker could add up to the allowance to a queue already at the threshold in
        every scrape interval.
        """
        return self._queue(endpoint, self._track(endpoint))

    def unreported_score(self, endpoint: Endpoint) -> float:
        """``unreported / allowance`` (see the module docstring); 0.0 where the term does not apply."""
        track = self._track(endpoint)
        return self._unreported(endpoint, track, track.allowance)

    def endpoint_score(self, endpoint: Endpoint, now: float, *, intake: bool = False) -> float:
        """``max(queue/allowance, kv/kv_threshold, unreported term)``; 1.0 when metrics are stale.

        ``allowance`` is the unreported term's where it applies, else ``queue_threshold``. With
        ``intake`` (and ``frontend_intake``) the unreported term's allowance is at least what the
        server's frontend takes in over ``frontend_wait`` (see the module docstring); the waiting
        queue's stays.

        With ``kv_requires_queue`` an endpoint with nothing waiting scores 0 whatever its KV use.
        The unreported term (``frontend_wait``) counts either way.
        """
        if not self.is_fresh(endpoint, now):
            return 1.0
        track = self._track(endpoint)
        queue = self._queue(endpoint, track)
        unreported = self._unreported(endpoint, track, track.intake_allowance if intake else track.allowance)
        if queue <= 0 and self.kv_requires_queue:
            return unreported
        kv = endpoint.metrics.kv_cache_usage / self.kv_threshold
        # a waiting queue counts against the same allowance: what a fast server drains in a
        # fraction of frontend_wait does not make it full (see the module docstring)
        return max(queue / (track.allowance or self.queue_threshold), kv, unreported)

    def _queue(self, endpoint: Endpoint, track: _Track) -> int:
        waiting = endpoint.metrics.waiting_queue_size
        if not self.track_in_flight:
            return waiting
        in_flight, base, limit = endpoint.in_flight, track.in_flight, self.connection_limit
        if limit is None:
            delta, extra = in_flight - base, 0
        else:
            delta = min(in_flight, limit) - min(base, limit)
            extra = max(0, in_flight - limit)
        delta -= self._started_since(endpoint, track)  # one that started waits no more
        if delta > 0 and waiting == 0 and track.allowance > 0.0:
            delta = 0
        return max(0, waiting + delta) + extra

    @staticmethod
    def _unreported(endpoint: Endpoint, track: _Track, allowance: float) -> float:
        """``max(0, in_flight_at_scrape - running - waiting) + in_flight - in_flight_at_scrape``
        (never below 0) over the allowance. With one gateway that is ``in_flight - running -
        waiting``; a gateway worker counts only its own requests against the server's whole
        running count, so its share at the scrape is often below zero, and without the floor that
        deficit hid every request it sent afterwards, which then counted nowhere (the requests
        sent since the scrape count here, not in the waiting queue). The change since the scrape
        also counts the requests seen to start since, where more started than finished (the module
        docstring)."""
        if allowance <= 0.0:
            return 0.0
        m = endpoint.metrics
        base = track.in_flight
        since = endpoint.in_flight - base - SaturationDetector._started_since(endpoint, track)
        unreported = max(0, base - m.running_requests - m.waiting_queue_size) + since
        return unreported / allowance if unreported > 0 else 0.0

    @staticmethod
    def _started_since(endpoint: Endpoint, track: _Track) -> int:
        """How many more of the gateway's in-flight requests there have been seen to start than
        at the scrape: requests that left the server's queue (never below 0, where more started
        requests finished than new ones started)."""
        return max(0, endpoint.in_flight_started - track.started)

    def _track(self, endpoint: Endpoint) -> _Track:
        """The endpoint's memory, updated the first time its current snapshot is seen."""
        m = endpoint.metrics
        track = self._baselines.get(endpoint.key)
        if track is None:
            track = self._baselines[endpoint.key] = _Track()
        if track.updated_at != m.updated_at:
            wait = self.frontend_wait
            if self.frontend_intake and wait is not None and m.finished_requests is not None:
                held = endpoint.in_flight - m.running_requests - m.waiting_queue_size > 0
                taken_in = m.running_requests + m.waiting_queue_size + m.finished_requests
                track.observe_intake(m.updated_at, taken_in, held)
            track.observe(m.updated_at, endpoint.in_flight, endpoint.in_flight_started, m.finished_requests)
            # the term applies with the setting, the server's finished-requests counter, and not
            # to a P/D decoder (its requests prefill on another server first, which reports them)
            if wait is None or endpoint.meta.labels.get(ROLE_LABEL) in DECODE_ROLES:
                track.allowance = 0.0
            elif m.finished_requests is None:
                track.allowance = 0.0
                if m.updated_at > 0 and endpoint.key not in self._uncounted:
                    self._uncounted.add(endpoint.key)
                    log.warning(
                        "endpoint %s exports no finished-requests counter, so flow_control.frontend_wait "
                        "does not apply to it: its waiting queue counts against queue_threshold, and "
                        "requests it holds without reporting them do not count towards saturation",
                        endpoint.key,
                    )
            else:
                track.allowance = max(float(self.queue_threshold), track.rate * wait)
            track.intake_allowance = track.allowance
            if track.allowance > 0.0 and track.intake_rate > 0.0 and wait is not None:
                track.intake_allowance = max(track.allowance, track.intake_rate * wait)
        return track

    def saturation(
        self, endpoints: Sequence[Endpoint], now: float, *, whole_pool: bool = True, intake: bool = False
    ) -> float:
        """The saturation over these healthy endpoints (>= 1.0 means saturated); ``whole_pool``
        False for a part of the pool (a P/D stage): the other endpoints' memory is kept;
        ``intake``: with the frontend's intake allowance (:meth:`endpoint_score`)."""
        scores = [self.endpoint_score(e, now, intake=intake) for e in endpoints if e.healthy]
        if whole_pool and len(self._baselines) > 4 * len(endpoints) + 16:
            self._forget_except({e.key for e in endpoints})
        if not scores:
            return 1.0
        if self.aggregation == "min":
            return min(scores)
        if self.aggregation == "capped-mean":
            return sum(min(x, 1.0) for x in scores) / len(scores)
        return sum(scores) / len(scores)

    def stages(self, endpoints: Sequence[Endpoint], now: float, *, intake: bool = False) -> dict[str, float]:
        """The saturation of each P/D stage, as llm-d-router splits a pool by ``llm-d.ai/role``:
        ``prefill`` over the endpoints that prefill (``prefill``, ``encode-prefill`` and the
        interleaved roles), ``decode`` over those that decode (``decode``, unlabelled and the
        interleaved ones); encode-only and unknown roles count in neither. A stage without
        endpoints is absent. A request needs room in both stages, so the pool is as saturated as
        its fuller stage."""
        prefill: list[Endpoint] = []
        decode: list[Endpoint] = []
        for e in endpoints:
            role = e.meta.labels.get(ROLE_LABEL)
            if not role or role in DECODE_ROLES:
                decode.append(e)
            if role in PREFILL_STAGE_ROLES:
                prefill.append(e)
        if len(self._baselines) > 4 * len(endpoints) + 16:
            self._forget_except({e.key for e in endpoints})
        parts = (("prefill", prefill), ("decode", decode))
        return {
            name: self.saturation(part, now, whole_pool=False, intake=intake) for name, part in parts if part
        }

    def is_saturated(self, endpoints: Sequence[Endpoint], now: float) -> bool:
        """True when the pool cannot take one more request without queueing at a model server."""
        return self.saturation(endpoints, now) >= 1.0

    def _forget_except(self, keys: set[str]) -> None:
        """Drop baselines of endpoints that left the pool, so the map stays bounded."""
        for key in [k for k in self._baselines if k not in keys]:
            del self._baselines[key]
        self._uncounted &= keys
