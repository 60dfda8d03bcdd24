"""The upstream pool's per-host connection limit (``HostGate``): first come, first served, and a
slot never lost to a cancelled waiter.

Waiters are tasks on the real loop; ``asyncio.sleep(0)`` lets each run to its next ``await`` (no
timing is involved: every step is one pass of the loop's ready queue).
"""

from __future__ import annotations

import asyncio

from infergate.net.host_gate import HostGate


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_free_slots_are_taken_without_waiting_then_waiters_queue_in_order() -> None:
    gate = HostGate(2)
    await gate.wait()
    await gate.wait()
    assert gate.free == 0
    order: list[int] = []

    async def waiter(i: int) -> None:
        await gate.wait()
        order.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(3)]
    await _settle()
    assert order == [] and len(gate.waiters) == 3
    gate.release()  # the test's first slot goes to waiter 0
    await _settle()
    assert order == [0]
    gate.release()  # its second to waiter 1
    await _settle()
    gate.release()  # waiter 0's to waiter 2
    await _settle()
    assert order == [0, 1, 2]
    await asyncio.gather(*tasks)
    gate.release()
    gate.release()
    assert gate.free == 2 and not gate.waiters


async def test_a_free_slot_is_not_taken_past_a_queue() -> None:
    """A newcomer finding a slot just released but a waiter still queued queues behind it."""
    gate = HostGate(1)
    await gate.wait()
    first = asyncio.create_task(gate.wait())
    await _settle()
    gate.release()  # handed to ``first``, not to the free count
    assert gate.free == 0
    second = asyncio.create_task(gate.wait())
    await _settle()
    assert first.done() and not second.done()
    gate.release()
    await _settle()
    assert second.done()


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    gate = HostGate(1)
    await gate.wait()
    leaving = asyncio.create_task(gate.wait())
    staying = asyncio.create_task(gate.wait())
    await _settle()
    leaving.cancel()
    await _settle()
    assert leaving.cancelled() and len(gate.waiters) == 1
    gate.release()
    await _settle()
    assert staying.done()
    gate.release()
    assert gate.free == 1 and not gate.waiters


async def test_a_slot_handed_to_a_waiter_cancelled_before_it_ran_passes_on() -> None:
    gate = HostGate(1)
    await gate.wait()
    cancelled = asyncio.create_task(gate.wait())
    nxt = asyncio.create_task(gate.wait())
    await _settle()
    gate.release()  # ``cancelled``'s future now holds the slot ...
    cancelled.cancel()  # ... and its task is cancelled before it resumes
    await _settle()
    assert cancelled.cancelled()
    assert nxt.done() and not nxt.cancelled()  # the slot went on to the next waiter
    gate.release()
    assert gate.free == 1 and not gate.waiters


async def test_a_waiter_cancelled_after_release_dropped_its_future_leaves_nothing_behind() -> None:
    gate = HostGate(1)
    await gate.wait()
    cancelled = asyncio.create_task(gate.wait())
    await _settle()
    cancelled.cancel()  # its future is cancelled at once; its task resumes later
    gate.release()  # skips the cancelled future: the slot goes back to the free count
    await _settle()
    assert cancelled.cancelled()
    assert gate.free == 1 and not gate.waiters
