"""LoRA adapter residency: GPU slots (``max_loras``) and the CPU LRU cache (``max_cpu_loras``).

Models vLLM's ``LRUCacheWorkerLoRAManager``: registered adapters live in a CPU cache of
``max_cpu_loras`` entries (least recently used evicted first); a step may only run adapters that
occupy one of ``max_loras`` GPU slots, and moving an adapter into a slot costs a CPU→GPU copy, or a
disk load first if it fell out of the CPU cache. The engine adds the returned cost to the step time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from infergate.simulator.profile import Profile


class AdapterCache:
    """GPU-slot and CPU-cache bookkeeping for LoRA adapters (names only; weights are imaginary)."""

    def __init__(self, max_loras: int, max_cpu_loras: int | None, profile: Profile) -> None:
        self.max_gpu = max(1, max_loras)
        self.max_cpu = max(self.max_gpu, max_cpu_loras if max_cpu_loras is not None else self.max_gpu)
        self.profile = profile
        self.gpu: OrderedDict[str, None] = OrderedDict()
        self.cpu: OrderedDict[str, None] = OrderedDict()
        self.loads_from_disk = 0
        self.loads_from_cpu = 0
        self.gpu_loads = 0  # adapters brought into a GPU slot: the LoRA swaps a router causes

    def _to_cpu(self, name: str) -> float:
        """Make ``name`` CPU-resident; returns the load cost in ms (0 if already there)."""
        if name in self.cpu:
            self.cpu.move_to_end(name)
            return 0.0
        self.cpu[name] = None
        self.loads_from_disk += 1
        while len(self.cpu) > self.max_cpu:
            old, _ = self.cpu.popitem(last=False)
            self.gpu.pop(old, None)
        return self.profile.lora_disk_load_ms

    def preload(self, name: str) -> float:
        """Load an adapter into the CPU cache (``/v1/load_lora_adapter``); returns its cost in ms."""
        return self._to_cpu(name)

    def activate(self, names: Iterable[str]) -> float:
        """Put every adapter of a step into a GPU slot; returns the added step time in ms."""
        wanted = sorted(set(names))
        cost = 0.0
        for name in wanted:
            if name in self.gpu:
                self.gpu.move_to_end(name)
                if name in self.cpu:
                    self.cpu.move_to_end(name)
                continue
            disk = self._to_cpu(name)
            cost += disk
            if disk == 0.0:
                self.loads_from_cpu += 1
            cost += self.profile.lora_cpu_to_gpu_ms
            self.gpu_loads += 1
            if len(self.gpu) >= self.max_gpu:
                for old in list(self.gpu):
                    if old not in wanted:
                        del self.gpu[old]
                        break
            self.gpu[name] = None
        return cost

    def remove(self, name: str) -> None:
        self.gpu.pop(name, None)
        self.cpu.pop(name, None)
