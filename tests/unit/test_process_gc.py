"""The garbage collector as a serving process settles it (``tune_gc_for_serving``).

Each test puts the interpreter's collector back as it found it: the rest of the suite runs in
this process.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from infergate.app.process import GC_GEN0_THRESHOLD, tune_gc_for_serving


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_startup_objects_leave_the_generations_and_young_collections_wait() -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    startup_state = [{"plugin": i} for i in range(100)]  # alive before serving, for good
    tune_gc_for_serving()
    assert gc.get_freeze_count() >= len(startup_state)
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD, 10, 10)


@pytest.mark.usefixtures("restored_gc")
def test_a_higher_threshold_or_a_disabled_collector_is_left_as_it_is() -> None:
    gc.set_threshold(GC_GEN0_THRESHOLD * 2, 5, 5)
    tune_gc_for_serving()
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD * 2, 5, 5)
    gc.set_threshold(0, 5, 5)  # gc.set_threshold(0) is how an embedder turns collection off
    tune_gc_for_serving()
    assert gc.get_threshold() == (0, 5, 5)
