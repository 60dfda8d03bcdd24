"""Flow-control settings: one frozen value object the app builds from the ``flow_control`` settings group.

Kept apart from the controller so that the data planes, the CLI and the digital twin can build a
configuration without pulling in asyncio code.
"""

from __future__ import annotations

from dataclasses import dataclass

from infergate.flowcontrol.program_aware import ProgramAwareParams
from infergate.flowcontrol.queues import FAIRNESS, ORDERINGS
from infergate.flowcontrol.usage_limits import USAGE_LIMITS

__all__ = ["DEFAULT_BAND_MAX_BYTES", "FOLLOW_DEFAULT_TTL", "FlowControlConfig"]

#: The reference's default per-band byte capacity (``defaultPriorityBandMaxBytes``).
DEFAULT_BAND_MAX_BYTES = 1_000_000_000

#: ``no_endpoint_ttl`` value meaning "the same budget as ``default_ttl``" (the reference's default).
FOLLOW_DEFAULT_TTL = -1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowControlConfig:
    """How requests wait while the pool is saturated.

    Attributes:
        enabled: queue requests while saturated. When False only the reference's legacy admission
            applies: sheddable requests (priority < 0) are rejected with 429 while saturated and
            every other request passes straight through.
        default_ttl: seconds a request may wait in a queue while the pool has a ready endpoint,
            then it is answered 429 (``x-llm-d-request-dropped-reason: rejected-ttl-expired``);
            ``None`` waits until the client gives up.
        no_endpoint_ttl: seconds a request may wait while the pool has no ready endpoint at all
            (scaled to zero, every replica starting), then it is answered 503
            (``rejected-no-endpoints``); ``None`` waits until an endpoint comes or the client
            gives up; :data:`FOLLOW_DEFAULT_TTL` (the default): ``default_ttl``. The budget in
            force is chosen again whenever the pool gains its first or loses its last ready
            endpoint, and each change starts a fresh budget, but a request never waits longer than
            the longer of the two budgets in total. Separate budgets because the two waits differ:
            a cold start takes minutes, while a saturated pool should shed within a TTFT budget.
        band_max_requests: most requests one priority band may hold (``None``: unlimited).
        band_max_bytes: most request-body bytes one priority band may hold (``None``: unlimited).
        max_requests: most requests all bands together may hold (``None``: unlimited).
        max_bytes: most request-body bytes all bands together may hold (``None``: unlimited).
        retry_after: seconds advertised in ``Retry-After`` when a request is rejected with 429.
        recheck_interval: longest time the dispatcher sleeps while requests wait, as a safety net
            in case no datastore change arrives to wake it.
        pool_name: ``inference_pool`` metric label when the datastore has no pool yet.
        headroom: share of the pool's saturation scale kept free for the top band: a request whose
            priority is below ``top_priority`` is admitted or released only while the pool's
            saturation is below ``1 - headroom``; the top band may fill the pool up to 1.0. So a
            flood of lower-priority work never takes the last room a higher-priority request
            arriving next would need. 0 disables it (every band up to 1.0, the reference).
        top_priority: the priority that may use the headroom; ``None`` takes the highest priority
            among the pool's objectives (a request above every objective counts as top too).
        usage_limit: the usage-limit policy (:mod:`.usage_limits`): ``headroom`` (the two
            fields above), ``static``, ``priority-holdback`` or ``soft-reflective-ceiling``.
        usage_limit_ceiling: ``static``: every band's ceiling; ``priority-holdback``: the highest
            priority's.
        usage_limit_min_ceiling: ``priority-holdback``: the lowest priority's ceiling.
        usage_limit_domain: ``priority-holdback``: ``rank`` or ``value``.
        priority_bands: priorities of statically configured bands (the reference's
            ``flowControl.priorityBands[].priority``): a ranked policy (``priority-holdback``,
            ``soft-reflective-ceiling``) counts them among the levels in use from the start and
            never drops them when idle (:class:`~.usage_limits.PriorityLevels`); the other
            policies rank nothing, so they do not read it.
        ordering: the order of one flow's requests: ``fcfs``, or ``slo-deadline`` (earliest
            arrival plus the request's own TTFT bound first; see :mod:`.queues`).
        fairness: how the flows (fairness ids) of a band take turns: ``round-robin``,
            ``global-strict`` (the band served as one queue in ``ordering``'s order) or
            ``program-aware`` (least attained service, :mod:`.program_aware`).
        program_aware: the ``program-aware`` policy's weights, half-life and idle TTL.
        route_to_room: when queueing is enabled, a request may only be scheduled onto an endpoint
            that itself has room (its saturation score < 1), whenever one is eligible. The
            scheduler's prefix and LoRA affinity can otherwise send a released request to a full
            replica, where it waits in the model server's queue and priority no longer applies.
    """

    enabled: bool = True
    default_ttl: float | None = 30.0
    no_endpoint_ttl: float | None = FOLLOW_DEFAULT_TTL
    band_max_requests: int | None = None
    band_max_bytes: int | None = DEFAULT_BAND_MAX_BYTES
    max_requests: int | None = None
    max_bytes: int | None = None
    retry_after: float = 1.0
    recheck_interval: float = 0.25
    pool_name: str = ""
    headroom: float = 0.2
    top_priority: int | None = None
    usage_limit: str = "headroom"
    usage_limit_ceiling: float = 1.0
    usage_limit_min_ceiling: float | None = None
    usage_limit_domain: str = "rank"
    priority_bands: tuple[int, ...] = ()
    route_to_room: bool = True
    ordering: str = "fcfs"
    fairness: str = "round-robin"
    program_aware: ProgramAwareParams = ProgramAwareParams()  # noqa: RUF009 - frozen value object

    @property
    def empty_pool_ttl(self) -> float | None:
        """The queue-wait budget while the pool has no ready endpoint (``no_endpoint_ttl`` resolved)."""
        return self.default_ttl if self.no_endpoint_ttl == FOLLOW_DEFAULT_TTL else self.no_endpoint_ttl

    def __post_init__(self) -> None:
        if self.default_ttl is not None and self.default_ttl <= 0:
            raise ValueError("default_ttl must be > 0 or None")
        ttl = self.no_endpoint_ttl
        if ttl is not None and ttl <= 0 and ttl != FOLLOW_DEFAULT_TTL:
            raise ValueError("no_endpoint_ttl must be > 0, None or FOLLOW_DEFAULT_TTL")
        for name in ("band_max_requests", "band_max_bytes", "max_requests", "max_bytes"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None")
        if self.retry_after < 0:
            raise ValueError("retry_after must be >= 0")
        if not 0.0 <= self.headroom < 1.0:
            raise ValueError("headroom must be in [0, 1)")
        if self.usage_limit not in USAGE_LIMITS:
            raise ValueError(f"usage_limit must be one of {', '.join(USAGE_LIMITS)}")
        if self.fairness not in FAIRNESS:
            raise ValueError(f"fairness must be one of {', '.join(FAIRNESS)}")
        if self.ordering not in ORDERINGS:
            raise ValueError(f"ordering must be one of {', '.join(ORDERINGS)}")
        if self.recheck_interval <= 0:
            raise ValueError("recheck_interval must be > 0")
