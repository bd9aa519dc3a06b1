"""Where model calls run: a thread pool (onnxruntime releases the GIL) behind an admission limit and a deadline.

At most `max_inflight + max_queue` requests hold a slot (reading their upload, queued for a worker, or running);
beyond that a request is turned away with 503 + Retry-After before its body is read (`middleware.Admission`).
An admitted request carries a `Ticket`: its deadline (`request_timeout_s` after admission, 504 past it) and an
event that stops its model work between window batches (`Classifier.predict(deadline=, cancel=)`) once the
deadline passes or the client disconnects. Its slot is free again when both the answer is sent and the work has
stopped, so abandoned work never piles up behind the limit.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from earshot.serve.errors import ApiError
from earshot.serve.metrics import Metrics
from earshot.serve.settings import Settings

T = TypeVar("T")

TICKET = "earshot.ticket"  # scope key of an admitted request's Ticket


class Limiter:
    """Admission control: at most `limit` requests hold a slot (running or queued for a worker). A request that
    finds every slot taken may `wait` a bounded time: slots freed meanwhile pass to the waiters in arrival order.
    Called on the event loop only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[asyncio.Future[bool]] = deque()

    def full(self) -> bool:
        return self.used >= self.limit

    def try_acquire(self) -> bool:
        if self.used >= self.limit:
            return False
        self.used += 1
        return True

    async def wait(self, seconds: float) -> bool:
        """Wait up to `seconds` for a slot (True: it is held now, as after `try_acquire`)."""
        if self.try_acquire():
            return True
        loop = asyncio.get_running_loop()
        while self._waiters and self._waiters[0].done():
            self._waiters.popleft()
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(fut)
        timer = loop.call_later(seconds, lambda: fut.done() or fut.set_result(False))
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.result():  # handed a slot as it was cancelled
                self.release()
            raise
        finally:
            timer.cancel()

    def give_back(self) -> None:
        """Free a slot without handing it to a waiter: for a caller that takes it again (`try_acquire`) before
        the event loop runs anything else."""
        self.used -= 1

    def release(self) -> None:
        while self._waiters:  # the slot passes straight to the longest waiter, if any
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return
        self.used -= 1


class Ticket:
    """An admitted request: its deadline (`time.monotonic()`), the event that stops its work, and its slot, held
    until the request and the work it started have both ended (`hold` / `drop`, on the event loop)."""

    __slots__ = ("deadline", "cancel", "_holders", "_release")

    def __init__(self, deadline: float, release: Callable[[], None]) -> None:
        self.deadline = deadline
        self.cancel = threading.Event()
        self._holders = 1
        self._release = release

    def remaining(self) -> float:
        """Seconds left before the deadline (0 once passed)."""
        return max(0.0, self.deadline - time.monotonic())

    def hold(self) -> None:
        self._holders += 1

    def drop(self) -> None:
        self._holders -= 1
        if self._holders == 0:
            self._release()


class Inference:
    """The inference pool and its admission limit; `admit` hands out tickets, `run` gets a model call done."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.limiter = Limiter(settings.max_inflight + settings.max_queue)
        self.pool = ThreadPoolExecutor(max_workers=settings.max_inflight, thread_name_prefix="earshot-infer")
        self._second, self._this, self._last = 0, 0, 0  # rejections counted per second (this one, the last)

    def reject_hold(self) -> float:
        """Seconds a request that found every slot taken waits for one before its 503 (called once per such
        request, on the event loop): while they come faster than `reject_hold_above` a second (clients retrying
        at once, not after Retry-After) each waits up to `reject_hold_ms` without using CPU, so that rejecting
        does not crowd out answering; otherwise none."""
        now = time.monotonic()
        second = int(now)
        if second != self._second:
            self._last = self._this if second == self._second + 1 else 0
            self._second, self._this = second, 0
        self._this += 1
        rate = self._this + self._last * (1.0 - (now - second))  # rejections in the last second, about
        return self.settings.reject_hold_ms / 1000 if rate > self.settings.reject_hold_above else 0.0

    def admit(self) -> Ticket | None:
        """A ticket for a new request, or None when every slot is taken (counted as an overload rejection)."""
        if not self.limiter.try_acquire():
            self.metrics.reject("overload")
            return None
        return self._ticket()

    async def admit_or_hold(self) -> Ticket | None:
        """As `admit`, except that under a retry storm a request that finds every slot taken waits for one
        first (`hold_for_slot`)."""
        if self.limiter.try_acquire() or await self.hold_for_slot():
            return self._ticket()
        return None

    async def hold_for_slot(self) -> bool:
        """For a request that found every slot taken: under a retry storm (`reject_hold`) wait up to the hold
        for one (True: held now). A slot freed meanwhile admits the longest waiter instead of answering it 503
        and taking its retry (upload included) a moment later. False: no slot, counted as an overload rejection."""
        hold = self.reject_hold()
        if hold > 0 and await self.limiter.wait(hold):
            return True
        self.metrics.reject("overload")
        return False

    def _ticket(self) -> Ticket:
        return Ticket(time.monotonic() + self.settings.request_timeout_s, self.limiter.release)

    def overloaded(self) -> ApiError:
        """The 503 answer."""
        return ApiError(
            503,
            "Overloaded",
            "overloaded",
            "server busy; retry shortly",
            {"Retry-After": str(self.settings.retry_after_s)},
        )

    def timed_out(self) -> ApiError:
        """The 504 answer (counted as a timeout rejection)."""
        self.metrics.reject("timeout")
        return ApiError(
            504, "Timeout", "timeout", f"no answer within {self.settings.request_timeout_s:g} s; try again later"
        )

    async def run(self, fn: Callable[[Ticket], T], ticket: Ticket | None = None) -> T:
        """`fn(ticket)` on the pool for an admitted request (`ticket`; None: admit it now, 503 if no slot is
        free); 504 past the ticket's deadline. When the answer is given up (deadline, cancelled request) the
        ticket's event is set, so `fn` stops at its next check."""
        own = ticket is None
        if ticket is None:
            ticket = self.admit()
            if ticket is None:
                raise self.overloaded()
        loop = asyncio.get_running_loop()
        ticket.hold()
        try:
            fut = self.pool.submit(fn, ticket)
        except RuntimeError:  # the pool is shut down
            ticket.drop()
            raise
        fut.add_done_callback(lambda _f: loop.is_closed() or loop.call_soon_threadsafe(ticket.drop))
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), ticket.remaining())
        except TimeoutError:
            ticket.cancel.set()
            fut.cancel()  # frees the worker now if the call had not started; else it stops at its next check
            raise self.timed_out() from None
        except asyncio.CancelledError:
            ticket.cancel.set()
            fut.cancel()
            raise
        finally:
            if own:
                ticket.drop()

    def shutdown(self) -> None:
        """Stop taking work; queued calls are cancelled, running ones finish in their threads."""
        self.pool.shutdown(wait=False, cancel_futures=True)
