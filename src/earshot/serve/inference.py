"""Where model calls run: a thread pool (onnxruntime releases the GIL) behind an admission limit and a deadline.

At most `max_inflight + max_queue` requests hold a slot (running or queued for a worker); beyond that a request
is turned away with 503 + Retry-After, and one not answered within `request_timeout_s` gets 504.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from earshot.serve.errors import ApiError
from earshot.serve.metrics import Metrics
from earshot.serve.settings import Settings

T = TypeVar("T")


class Limiter:
    """Admission control: at most `limit` requests hold a slot (running or queued for a worker)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def full(self) -> bool:
        return self.used >= self.limit

    def try_acquire(self) -> bool:  # called on the event loop only
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    def release(self) -> None:
        self.used -= 1


class Inference:
    """The inference pool and its admission limit; `run` is how a request gets a model call done."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.limiter = Limiter(settings.max_inflight + settings.max_queue)
        self.pool = ThreadPoolExecutor(max_workers=settings.max_inflight, thread_name_prefix="earshot-infer")

    def overloaded(self) -> ApiError:
        """The 503 answer (counted as an overload rejection)."""
        self.metrics.reject("overload")
        return ApiError(
            503,
            "Overloaded",
            "overloaded",
            "server busy; retry shortly",
            {"Retry-After": str(self.settings.retry_after_s)},
        )

    def check_capacity(self) -> None:
        """Raise the 503 now if no slot is free: before reading a body, so overload answers stay cheap."""
        if self.limiter.full():
            raise self.overloaded()

    async def run(self, fn: Callable[[], T]) -> T:
        """`fn()` on the pool inside an admission slot; 503 if none is free, 504 past the request deadline."""
        if not self.limiter.try_acquire():
            raise self.overloaded()
        deadline = time.monotonic() + self.settings.request_timeout_s
        loop = asyncio.get_running_loop()
        fut = self.pool.submit(fn)
        fut.add_done_callback(lambda _f: loop.is_closed() or loop.call_soon_threadsafe(self.limiter.release))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), max(0.001, deadline - time.monotonic()))
        except TimeoutError:
            fut.cancel()  # frees the slot now if it had not started; else when it ends
            self.metrics.reject("timeout")
            raise ApiError(
                504,
                "Timeout",
                "timeout",
                f"no answer within {self.settings.request_timeout_s:g} s; try again later",
            ) from None

    def shutdown(self) -> None:
        """Stop taking work; queued calls are cancelled, running ones finish in their threads."""
        self.pool.shutdown(wait=False, cancel_futures=True)

