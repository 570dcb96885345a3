"""The one retry helper, the one line per outage (`Link`), and the connection libraries'
lines kept as DEBUG detail."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from shared.retry import Backoff, Link, Stopped, Unreachable, reach, retry
from shared.service import Demote

FAST = Backoff(first=0.001, max=0.004)


def test_backoff_grows_by_its_factor_up_to_its_max():
    b = Backoff(first=0.5, max=10.0)
    assert [b.delay(n) for n in range(1, 8)] == [0.5, 1, 2, 4, 8, 10, 10]
    assert Backoff(first=1, max=5, factor=3).delay(2) == 3


class Flaky:
    """Fails `failures` times with `error`, then returns "done"."""

    def __init__(self, failures: int, error: Exception = ConnectionError("away")):
        self.failures, self.error, self.calls = failures, error, 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "done"


async def test_retry_tries_again_until_it_works_and_reports_each_failure():
    call, seen = Flaky(3), []
    got = await retry(call, what="test", errors=ConnectionError, backoff=FAST,
                      on_failure=lambda exc, n: seen.append(n))
    assert got == "done" and call.calls == 4 and seen == [1, 2, 3]


async def test_retry_lets_other_errors_through_and_stops_after_its_attempts():
    with pytest.raises(ValueError):
        await retry(Flaky(1, ValueError("a bug")), what="test", errors=ConnectionError, backoff=FAST)
    call = Flaky(5)
    with pytest.raises(ConnectionError):
        await retry(call, what="test", errors=ConnectionError, backoff=FAST, attempts=3)
    assert call.calls == 3


async def test_a_stop_ends_the_wait_at_once():
    stop = asyncio.Event()
    call = Flaky(100)
    task = asyncio.create_task(retry(call, what="test", errors=ConnectionError, stop=stop,
                                     backoff=Backoff(first=3600, max=3600)))
    while call.calls == 0:
        await asyncio.sleep(0)
    stop.set()
    with pytest.raises(Stopped):
        await asyncio.wait_for(task, 10)  # not an hour
    assert call.calls == 1


async def test_reach_logs_each_wait_then_gives_up_naming_the_dependency(caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(Unreachable, match="the thing unreachable after 3 attempts: away"):
        await reach("the thing", Flaky(10), attempts=3, errors=(ConnectionError,))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["the thing unreachable (away); attempt 1 of 3, retrying in 0.5 s",
                        "the thing unreachable (away); attempt 2 of 3, retrying in 1.0 s"]
    caplog.clear()
    assert await reach("the thing", Flaky(1), attempts=3, errors=(ConnectionError,)) == "done"
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(infos) == 1 and re.fullmatch(r"the thing reached after \d+ s", infos[0])


def lines(caplog) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "test.link"]


def test_a_link_logs_one_line_when_lost_and_one_when_back(caplog):
    caplog.set_level(logging.INFO)
    link = Link("the broker", logging.getLogger("test.link"))
    link.failed("refused")  # before it ever answered: start-up, reach reports that
    assert lines(caplog) == [] and not link.up
    link.ok()
    assert lines(caplog) == [] and link.up
    for why in ("connection closed", "refused", "refused"):
        link.failed(why)
    link.ok()
    link.ok()
    assert lines(caplog) == [(logging.WARNING, "lost the broker (connection closed); retrying"),
                             (logging.INFO, "the broker back after 0 s")]
    assert link.outages == 1 and link.lost_at is None


def test_a_link_is_back_only_once_every_part_is(caplog):
    caplog.set_level(logging.INFO)
    link = Link("the broker", logging.getLogger("test.link"))
    link.ok("connection")
    link.failed("closed", "connection")
    link.failed("closed", "events connection")
    link.ok("connection")
    assert not link.up and len(lines(caplog)) == 1
    link.ok("events connection")
    assert link.up and [level for level, _ in lines(caplog)] == [logging.WARNING, logging.INFO]


def test_watch_raises_the_back_ends_error_and_tells_the_link(caplog):
    caplog.set_level(logging.INFO)
    link = Link("the database", logging.getLogger("test.link"))
    with link.watch((OSError,), ConnectionAbortedError):
        pass  # answered
    with pytest.raises(ConnectionAbortedError, match="the database: ConnectionRefusedError: no") as raised:
        with link.watch((OSError,), ConnectionAbortedError):
            raise ConnectionRefusedError("no")
    assert isinstance(raised.value.__cause__, ConnectionRefusedError) and not link.up
    with pytest.raises(KeyError):  # not one of `errors`: a bug, left alone
        with link.watch((OSError,), ConnectionAbortedError):
            raise KeyError("x")
    assert [level for level, _ in lines(caplog)] == [logging.WARNING]


@pytest.mark.parametrize("show", [False, True])
def test_connection_libraries_lines_are_debug_detail(show):
    demote = Demote(show=show)
    library = logging.LogRecord("aiormq.connection", logging.ERROR, __file__, 1, "reconnecting", None, None)
    ours = logging.LogRecord("shared.bus.rabbitmq", logging.WARNING, __file__, 1, "lost", None, None)
    assert demote.filter(library) is show and (library.levelno, library.levelname) == (logging.DEBUG, "DEBUG")
    assert demote.filter(ours) and ours.levelno == logging.WARNING


def test_a_broker_resource_alarm_stays_a_warning():
    # Only aiormq hears of it, and it holds every publish (model events too) until it clears.
    demote = Demote(show=False)
    for msg, args in (("Connection %r was blocked by: %r", ("conn", "low on disk")),
                      ("Connection %r was unblocked", ("conn",))):
        record = logging.LogRecord("aiormq.connection", logging.WARNING, __file__, 1, msg, args, None)
        assert demote.filter(record) and record.levelno == logging.WARNING
