"""Waiting for a dependency at start-up: bounded, logged retries with exponential backoff.

Services start together (compose starts them in parallel, a database may still be
recovering), so a refused connection at start-up is normal for a while; a dependency
that stays away is not, and the service then stops with one clear line instead of
restarting in a tight loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
FIRST_DELAY_S = 0.5
MAX_DELAY_S = 10.0


class DependencyError(Exception):
    """A service cannot start because something it needs is missing (it exits with
    this message, and status 1)."""


class Unreachable(DependencyError, ConnectionError):
    """A dependency stayed unreachable through every start-up attempt."""


class Refused(DependencyError):
    """A dependency answered but refused us (a login, a permission): retrying will not
    help, so this is not retried."""


async def reach(what: str, attempt: Callable[[], Awaitable[T]], *, attempts: int,
                errors: tuple[type[BaseException], ...]) -> T:
    """`await attempt()` until it succeeds, at most `attempts` times; `errors` are the
    exceptions that mean "not there yet" (anything else propagates at once). `what`
    names the dependency in logs and must not hold a password (see `mask_url`)."""
    for n in range(1, attempts + 1):
        try:
            return await attempt()
        except errors as exc:
            if n == attempts:
                raise Unreachable(f"{what} unreachable after {n} attempts: {exc}") from None
            delay = min(FIRST_DELAY_S * 2 ** (n - 1), MAX_DELAY_S)
            log.warning("%s unreachable (%s); attempt %d of %d, retrying in %.1fs",
                        what, exc, n, attempts, delay)
            await asyncio.sleep(delay)
    raise AssertionError("attempts must be >= 1")
