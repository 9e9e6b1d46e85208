"""``await_all``: the inference server's wait for the n engine futures of one request (one loop wake-up)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import Future

import pytest

from intellect.rl.inference.server import await_all


def _finish_later(futures: list[Future[int]], values: list[int | BaseException]) -> threading.Thread:
    """Resolve the futures from another thread (as the decode loop does), last one first."""

    def run() -> None:
        for fut, value in reversed(list(zip(futures, values, strict=True))):
            time.sleep(0.01)
            if isinstance(value, BaseException):
                fut.set_exception(value)
            else:
                fut.set_result(value)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_results_come_back_in_order_with_one_wake_up() -> None:
    async def main() -> tuple[list[int], int]:
        loop = asyncio.get_running_loop()
        wakes = 0
        original = loop.call_soon_threadsafe

        def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal wakes
            wakes += 1
            return original(*args, **kwargs)

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        futures: list[Future[int]] = [Future() for _ in range(8)]
        thread = _finish_later(futures, list(range(8)))
        result = await await_all(futures)
        thread.join()
        return result, wakes

    result, wakes = asyncio.run(main())
    assert result == list(range(8))
    assert wakes == 1  # asyncio.gather over wrap_future would make 8


def test_a_failure_is_raised_once_all_are_done() -> None:
    async def main() -> None:
        futures: list[Future[int]] = [Future() for _ in range(3)]
        thread = _finish_later(futures, [1, ValueError("decode failed"), 3])
        try:
            await await_all(futures)
        finally:
            thread.join()

    with pytest.raises(ValueError, match="decode failed"):
        asyncio.run(main())
    assert asyncio.run(await_all_empty()) == []


async def await_all_empty() -> list[int]:
    return await await_all([])


def test_cancelling_the_request_cancels_its_sequences() -> None:
    """A client that goes away cancels the wait: the engine sees cancelled futures and drops the sequences."""
    futures: list[Future[int]] = [Future() for _ in range(4)]

    async def main() -> None:
        task = asyncio.ensure_future(await_all(futures))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert all(f.cancelled() for f in futures)
