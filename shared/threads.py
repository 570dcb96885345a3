"""Blocking work in a worker thread that a cancelled caller waits for.

`asyncio.to_thread` returns at once when its caller is cancelled, but the thread runs on
with whatever it was handed: a SQLite connection, say. If the caller held a lock for that
connection, the lock is released while the thread still uses it, and the next user (or
`close()`) runs beside it; SQLite's Python module does not survive that (a segfault at
shutdown, when retention's pass was cancelled mid-query).
"""

from __future__ import annotations

import asyncio
from typing import Callable, TypeVar

T = TypeVar("T")


async def to_thread_to_completion(fn: Callable[..., T], *args) -> T:
    """`fn(*args)` in a worker thread; a cancellation waits until it has returned, then
    propagates."""
    done = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        while not done.done():
            try:
                await asyncio.wait([done])
            except asyncio.CancelledError:
                pass  # already cancelled: still wait for the thread
        raise
