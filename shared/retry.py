"""Trying again while a dependency is away: one backoff policy, one helper.

Every caller names only what it retries (the call, and the errors that mean "not now")
and what it does between tries; the waiting is the same everywhere:
- at start-up (`reach`), bounded: services start together (compose starts them in
  parallel, a database may still be recovering), so a refused connection is normal for
  a while; a dependency that stays away is not, and the service then stops with one
  clear line instead of restarting in a tight loop;
- while running (`retry` with a `stop` event), unbounded: the call is tried again until
  it succeeds or the service is asked to stop, and a stop ends the wait at once.
Each failed try is logged at DEBUG only. What a person reads is one line when a
dependency is lost and one when it is back, from the back end that talks to it (a
`Link`), however many calls fail in between; at start-up, one line per attempt (a
service that cannot start says why, and how long it will keep trying).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Awaitable, Callable, Iterator, TypeVar

import msgspec

log = logging.getLogger(__name__)

T = TypeVar("T")


class Backoff(msgspec.Struct, frozen=True):
    """The waits between tries: `first`, then each `factor` times the one before, never
    more than `max` (seconds)."""

    first: float
    max: float
    factor: float = 2.0

    def delay(self, failures: int) -> float:
        """The wait after `failures` failed tries in a row (1 for the first)."""
        return min(self.first * self.factor ** (failures - 1), self.max)


# Start-up: about four minutes over the default 30 attempts before giving up.
STARTUP = Backoff(first=0.5, max=10.0)
# While running: soon after a blip, then every few seconds.
RUNNING = Backoff(first=0.2, max=5.0)


class DependencyError(Exception):
    """A service cannot start because something it needs is missing (it exits with
    this message, and status 1)."""


class Unreachable(DependencyError, ConnectionError):
    """A dependency stayed unreachable through every start-up attempt."""


class Refused(DependencyError):
    """A dependency answered but refused us (a login, a permission): retrying will not
    help, so this is not retried."""


class Stopped(Exception):
    """The service was asked to stop while waiting to try again."""


async def retry(call: Callable[[], Awaitable[T]], *, what: str,
                errors: type[BaseException] | tuple[type[BaseException], ...],
                backoff: Backoff = RUNNING, stop: asyncio.Event | None = None, attempts: int | None = None,
                on_failure: Callable[[BaseException, int], None] | None = None) -> T:
    """`await call()` until it succeeds. `errors` mean "not now"; anything else
    propagates at once. After a failure: `on_failure(error, failures so far)`, then the
    backoff's wait, which `stop` cuts short by raising `Stopped`. With `attempts`, the
    last failure propagates."""
    failures = 0
    while True:
        try:
            return await call()
        except errors as exc:
            failures += 1
            if attempts is not None and failures >= attempts:
                raise
            if on_failure is not None:
                on_failure(exc, failures)
            delay = backoff.delay(failures)
            log.debug("%s failed (%s: %s); try %d in %.2f s", what, type(exc).__name__, exc, failures + 1, delay)
            await pause(delay, stop)


async def pause(seconds: float, stop: asyncio.Event | None) -> None:
    """Sleep `seconds`; `Stopped` as soon as `stop` is set."""
    if stop is None:
        await asyncio.sleep(seconds)
        return
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return
    raise Stopped


async def reach(what: str, attempt: Callable[[], Awaitable[T]], *, attempts: int,
                errors: tuple[type[BaseException], ...]) -> T:
    """`await attempt()` until it succeeds, at most `attempts` times (start-up); then
    `Unreachable`. `what` names the dependency in logs and must not hold a password
    (see `mask_url`)."""
    started, waited = time.monotonic(), False

    def waiting(exc: BaseException, failures: int) -> None:
        nonlocal waited
        waited = True
        log.warning("%s unreachable (%s); attempt %d of %d, retrying in %.1f s",
                    what, exc, failures, attempts, STARTUP.delay(failures))

    try:
        result = await retry(attempt, what=f"reaching {what}", errors=errors, backoff=STARTUP,
                             attempts=attempts, on_failure=waiting)
    except errors as exc:
        raise Unreachable(f"{what} unreachable after {attempts} attempts: {exc}") from None
    if waited:
        log.info("%s reached after %.0f s", what, time.monotonic() - started)
    return result



class Link:
    """Whether one dependency answers, as this process sees it: one WARNING line when it
    is lost, one INFO line when it is back. The back end that talks to the dependency
    reports to it (`failed` / `ok`, or `watch` around each call); `part` tells apart
    pieces that must all work again (e.g. two connections). Nothing is logged before the
    dependency first answered: waiting for it at start-up is `reach`'s to report."""

    def __init__(self, name: str, logger: logging.Logger = log):
        self.name = name  # e.g. "RabbitMQ at amqp://guest:***@host:5672/": never a password
        self._log = logger
        self._down: set[str] = set()
        self._answered = False
        self.lost_at: float | None = None  # monotonic clock, while lost
        self.outages = 0

    @property
    def up(self) -> bool:
        return not self._down

    def failed(self, why: str, part: str = "") -> None:
        self._down.add(part)
        if self._answered and self.lost_at is None:
            self.lost_at = time.monotonic()
            self.outages += 1
            self._log.warning("lost %s (%s); retrying", self.name, why)

    def ok(self, part: str = "") -> None:
        self._down.discard(part)
        if self._down:
            return
        self._answered = True
        if self.lost_at is not None:
            self._log.info("%s back after %.0f s", self.name, time.monotonic() - self.lost_at)
            self.lost_at = None

    @contextlib.contextmanager
    def watch(self, errors: tuple[type[BaseException], ...], into: type[Exception]) -> Iterator[None]:
        """Around one call to the dependency: `errors` are reported and raised as `into`
        (the back end's own error, naming the dependency); a call that returns reports
        it answering."""
        try:
            yield
        except errors as exc:
            why = f"{type(exc).__name__}: {exc}"
            self.failed(why)
            raise into(f"{self.name}: {why}") from exc
        self.ok()
