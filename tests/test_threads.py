"""A cancelled caller of thread work waits for the thread: the connection it uses is not
handed to the next statement (or closed) while the thread still runs on it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from shared.evaluations.sqlite import SqliteEvaluations
from shared.games import get_game
from shared.replay.sqlite import SqliteReplay
from shared.threads import to_thread_to_completion


def slow(finished: threading.Event, seconds: float = 0.3) -> None:
    time.sleep(seconds)
    finished.set()


async def test_a_cancelled_caller_returns_only_after_the_thread_has():
    finished = threading.Event()
    task = asyncio.create_task(to_thread_to_completion(slow, finished))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()


async def test_a_second_cancel_while_waiting_still_waits():
    finished = threading.Event()
    task = asyncio.create_task(to_thread_to_completion(slow, finished))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()


@pytest.mark.parametrize("store", ["replay", "evaluations"])
async def test_sqlite_statements_cancelled_mid_thread_keep_the_connection_until_done(store, make_config):
    config = make_config(storage={"replay_backend": "sqlite"})
    opened = (SqliteReplay(config.storage, get_game("tictactoe")) if store == "replay"
              else SqliteEvaluations(config.storage))
    async with opened as db:
        finished = threading.Event()
        task = asyncio.create_task(db._run(slow, finished))  # as retention's pass, cancelled at shutdown
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert finished.is_set() and not db._lock.locked()
        seen = threading.Event()
        task = asyncio.create_task(db._run(slow, seen))
        await asyncio.sleep(0.05)
        task.cancel()
    # Leaving closed the connection only after the thread was done with it.
    assert seen.is_set() and db._db is None
