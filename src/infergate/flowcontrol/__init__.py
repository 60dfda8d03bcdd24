"""infergate.flowcontrol: saturation detection, priority bands with fair queues, TTL and shedding.

``FlowController.admit`` is what request control awaits before scheduling; ``FlowCore`` is the same
logic without asyncio, for the digital twin.
"""

from infergate.flowcontrol.config import FlowControlConfig
from infergate.flowcontrol.controller import FlowController
from infergate.flowcontrol.core import Decision, FlowCore, Offer
from infergate.flowcontrol.queues import BandSnapshot, FlowSnapshot, ItemState, PriorityQueues, QueuedItem
from infergate.flowcontrol.saturation import SaturationDetector

__all__ = [
    "BandSnapshot",
    "Decision",
    "FlowControlConfig",
    "FlowController",
    "FlowCore",
    "FlowSnapshot",
    "ItemState",
    "Offer",
    "PriorityQueues",
    "QueuedItem",
    "SaturationDetector",
]
