"""Ingest on the real RabbitMQ and PostgreSQL: rows land exactly once with their content,
unusable messages are dead-lettered with the reason, nothing is acked before its commit,
and setting up the topology and the schema can be repeated."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aio_pika
import asyncpg
import msgspec
import numpy as np
import pytest
from aiormq.exceptions import ChannelPreconditionFailed

from services.ingest.checks import check_many
import services.ingest.service as ingest_module
from services.ingest.service import IngestService
from shared.bus.rabbitmq import (
    CONTENT_TYPE_JSON,
    CONTENT_TYPE_MSGPACK,
    ERROR_HEADER,
    bind_event_queue,
    connect,
    declare_topology,
)
from shared.bus import RabbitBus
from shared.games import get_game
from shared.games.random_play import random_games
from shared.messages import Array, MessageError, decode_transitions, encode_transitions
from shared.replay import open_replay
from shared.transitions import Transitions, from_batch
from tests.helpers import assert_same_rows, message

GAME = get_game("tictactoe")
REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 60  # only guards against a hang; nothing waits for it to pass


# -- helpers ---------------------------------------------------------------------------
async def publish(config, bodies: list[tuple[str, bytes]], headers: dict | None = None) -> None:
    """Publish as actors do: persistent, confirmed, message id = batch id."""
    connection = await connect(config.broker, name="test publisher")
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await declare_topology(channel, config.broker)
        for batch_id, body in bodies:
            await channel.default_exchange.publish(
                aio_pika.Message(body, message_id=batch_id, headers=headers or {},
                                 content_type=CONTENT_TYPE_MSGPACK,
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=config.broker.transitions_queue)


async def queue_depth(config, queue: str | None = None) -> int:
    """Messages ready in a queue (not counting any consumer's unacked ones)."""
    connection = await aio_pika.connect(config.broker.url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue or config.broker.transitions_queue, passive=True)
        return declared.declaration_result.message_count


async def dead_letters(config) -> list[aio_pika.abc.AbstractIncomingMessage]:
    connection = await aio_pika.connect(config.broker.url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(config.broker.dead_letter_queue, passive=True)
        found = []
        while (msg := await queue.get(no_ack=True, fail=False)) is not None:
            found.append(msg)
        return found


async def stored(config) -> Transitions:
    async with open_replay(config.storage, GAME) as replay:
        _, rows = await replay.fetch_since("tictactoe", 0, 1_000_000)
    return rows


async def ingest_burst(config) -> IngestService:
    ingest = IngestService(config)
    async with asyncio.timeout(TIMEOUT_S):
        await ingest.run(burst=True)
    return ingest


async def until(condition, what: str) -> None:
    """Wait for a condition the service reaches by itself (a hang fails the test)."""
    try:
        async with asyncio.timeout(TIMEOUT_S):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def first_rows(t: Transitions, n: int) -> Transitions:
    return Transitions(**{k: v[:n] for k, v in t.__dict__.items()})


def last_rows(t: Transitions, n: int) -> Transitions:
    return Transitions(**{k: v[-n:] for k, v in t.__dict__.items()})


# -- (a) rows land with their content --------------------------------------------------
async def test_published_messages_land_with_their_content(make_config):
    config = make_config()
    games = random_games("tictactoe", games=30, seed=1)
    await publish(config, [message(g, actor_id=f"actor-{i % 3}") for i, g in enumerate(games)])
    ingest = await ingest_burst(config)

    everything = Transitions.concat(games)
    assert ingest.stats.rows == len(everything) and ingest.stats.messages == 30
    assert await queue_depth(config) == 0
    async with open_replay(config.storage, GAME) as replay:
        assert await replay.count("tictactoe") == len(everything)
        assert await replay.count("connect4") == 0
        # Read back in pieces as the trainer extends its window: same rows, same order.
        parts, last_id = [], 0
        while True:
            new_last, rows = await replay.fetch_since("tictactoe", last_id, 50)
            if not len(rows):
                assert new_last == last_id
                break
            assert new_last > last_id
            parts.append(rows)
            last_id = new_last
        assert_same_rows(Transitions.concat(parts), everything)
        newest_last, newest = await replay.fetch_newest("tictactoe", 40)
        assert newest_last == last_id
        assert_same_rows(newest, last_rows(everything, 40))
    conn = await asyncpg.connect(config.storage.postgres_url)
    try:
        actors = await conn.fetch("SELECT actor_id, count(*) AS n FROM transitions GROUP BY 1 ORDER BY 1")
        ledger = await conn.fetchval("SELECT count(*) FROM transitions_batches")
        newest_id = await conn.fetchval("SELECT max(id) FROM transitions")
    finally:
        await conn.close()
    assert last_id == newest_id  # reading in pieces reached the newest row
    assert [(r["actor_id"], r["n"]) for r in actors] == [
        (f"actor-{a}", sum(len(g) for i, g in enumerate(games) if i % 3 == a)) for a in range(3)]
    assert ledger == 30


# -- (b) exactly once ------------------------------------------------------------------
async def test_the_same_batch_published_twice_lands_once(make_config):
    config = make_config()
    games = random_games("tictactoe", games=6, seed=2)
    bodies = [message(g) for g in games]
    await publish(config, bodies + bodies[:2])  # two of them twice, likely in one flush
    ingest = await ingest_burst(config)
    assert ingest.stats.duplicates == 2
    assert_same_rows(await stored(config), Transitions.concat(games))

    # Redelivered again later (e.g. an ack lost in a broker restart): still once.
    await publish(config, bodies[:3])
    again = await ingest_burst(config)
    assert again.stats.duplicates == 3 and again.stats.rows == 0
    assert_same_rows(await stored(config), Transitions.concat(games))


async def test_a_game_already_stored_under_another_batch_id_is_skipped(make_config):
    # The ledger cannot see this one (new batch id); UNIQUE (game_id, ply) does, and the
    # flush falls back to skipping those rows rather than aborting.
    config = make_config()
    old, new = random_games("tictactoe", games=2, seed=3)
    await publish(config, [message(old)])
    await ingest_burst(config)
    await publish(config, [message(old), message(new)])  # old game, fresh batch id
    ingest = await ingest_burst(config)
    assert ingest.stats.rows == len(new)
    assert_same_rows(await stored(config), Transitions.concat([old, new]))


# -- (c) unusable messages are dead-lettered -------------------------------------------
def with_fields(t: Transitions, **fields) -> bytes:
    """A message for `t` with some arrays replaced (to make it invalid)."""
    batch = decode_transitions(message(t)[1])
    return encode_transitions(msgspec.structs.replace(batch, **{k: Array.of(v) for k, v in fields.items()}))


def mass_on_illegal_moves(t: Transitions) -> bytes:
    illegal = ~t.legal_mask & (t.legal_mask.sum(axis=1, keepdims=True) < 9)  # not the empty board
    policy = np.where(illegal, 1.0, 0.0) / np.maximum(illegal.sum(axis=1, keepdims=True), 1)
    policy[~illegal.any(axis=1)] = t.policy[~illegal.any(axis=1)]
    return with_fields(t, policy=policy.astype(np.float32))


@pytest.mark.parametrize("make_bad, reason", [
    (lambda t: np.random.default_rng(0).bytes(300), "not a transition batch"),
    (lambda t: msgspec.msgpack.encode({"hello": "world"}), "not a transition batch"),
    (lambda t: msgspec.msgpack.encode(msgspec.structs.replace(
        decode_transitions(message(t)[1]), schema_version=99)), "unknown transitions schema_version 99"),
    (mass_on_illegal_moves, "policy: probability mass on illegal moves"),
    (lambda t: with_fields(t, value=np.full(len(t), np.nan, np.float32)), "NaN"),
    (lambda t: with_fields(t, observation=np.zeros((len(t), 2, 4, 4), np.uint8)), "observation: expected shape"),
    (lambda t: with_fields(t, ply=t.ply.astype(np.int64)), "ply: expected dtype int16"),
    (lambda t: message(t, env_id="connect4")[1], "does not match this pipeline's 'tictactoe'"),
    (lambda t: message(t, env_id="chess")[1], "does not match this pipeline's 'tictactoe'"),
    (lambda t: with_fields(t, policy=np.where(t.legal_mask, np.inf, 0).astype(np.float32)), "infinite"),
    (lambda t: with_fields(t, policy=(t.policy * 0.5).astype(np.float32)), "policy: rows must sum to 1"),
    (lambda t: with_fields(t, ply=(t.ply + 40).astype(np.int16)), "ply: values must lie in [0, 8]"),
    (lambda t: with_fields(t, ply=(t.ply - 1).astype(np.int16)), "ply: values must lie in [0, 8]"),
], ids=["random-bytes", "other-msgpack", "schema-version", "illegal-mass", "nan", "shape", "dtype", "env",
        "unknown-env", "inf", "policy-sum", "ply-too-big", "ply-negative"])
async def test_unusable_messages_are_dead_lettered_and_the_rest_land(make_config, make_bad, reason):
    config = make_config()
    good = random_games("tictactoe", games=4, seed=4)
    bad_body = make_bad(random_games("tictactoe", games=1, seed=5)[0])
    bodies = [message(good[0]), message(good[1]), ("bad-1", bad_body), message(good[2]), message(good[3])]
    await publish(config, bodies, headers={"x-origin": "test"})
    ingest = await ingest_burst(config)

    assert_same_rows(await stored(config), Transitions.concat(good))
    dead = await dead_letters(config)
    assert [m.message_id for m in dead] == ["bad-1"]
    assert reason in dead[0].headers[ERROR_HEADER]
    assert dead[0].body == bad_body and dead[0].headers["x-origin"] == "test"  # kept as it came
    assert ingest.stats.dead_lettered == 1
    assert await queue_depth(config) == 0  # the bad one was acked too, after its dead-lettering


def test_checking_a_flush_at_once_agrees_with_checking_each_message():
    games = random_games("tictactoe", games=12, seed=12)
    bodies = [message(g)[1] for g in games]
    bodies[3] = mass_on_illegal_moves(games[3])  # same layout as the good ones
    bodies[5] = with_fields(games[5], value=np.full(len(games[5]), 2, np.float32))
    bodies[7] = with_fields(games[7], legal_mask=games[7].legal_mask.astype(np.uint8))  # other layout
    bodies[8] = with_fields(games[8], **{f: v[:0] for f, v in games[8].__dict__.items()})  # no rows
    bodies[9] = message(games[9], env_id="connect4")[1]
    batches = [decode_transitions(b) for b in bodies]
    expected: list = []
    for batch in batches:
        try:
            expected.append(from_batch(batch, GAME))
        except MessageError as exc:
            expected.append(str(exc))
    # Two messages whose value arrays are 4 bytes short and 4 bytes long: together the
    # right length, so only a per-message length check keeps their rows from shifting.
    for i, delta in ((10, -4), (11, 4)):
        v = batches[i].value
        batches[i] = msgspec.structs.replace(batches[i], value=Array(v.dtype, v.shape, (v.data + bytes(4))[:len(v.data) + delta]))
        try:
            from_batch(batches[i], GAME)
        except MessageError as exc:
            expected[i] = str(exc)
    assert [i for i, e in enumerate(expected) if isinstance(e, str)] == [3, 5, 7, 8, 9, 10, 11]
    # All together, and each bad one alone among good ones (nothing else to make the
    # merged check fail).
    cases = [list(range(12)), [0, 10, 1, 11, 2]] + [[0, 1, bad, 2] for bad in (3, 5, 7, 8, 9)]
    for case in cases:
        got = check_many([batches[i] for i in case], GAME)
        for i, g in zip(case, got):
            if isinstance(expected[i], str):
                assert isinstance(g, MessageError) and str(g) == expected[i], (case, i)
            else:
                assert_same_rows(g, expected[i])


def test_a_message_from_an_older_actor_is_stored_with_what_stands_for_the_fields_it_lacks():
    # Actors older than the search_value and policy_weight fields are upgraded after
    # ingest: their games count, with the result as search value and full policy weight.
    old, new = random_games("tictactoe", games=2, seed=13)
    fields = msgspec.structs.asdict(decode_transitions(message(old)[1]))
    del fields["search_value"], fields["policy_weight"]
    older = decode_transitions(msgspec.msgpack.encode(fields))  # as an older actor encoded it
    assert older.search_value is None and older.policy_weight is None
    got = check_many([older, decode_transitions(message(new)[1])], GAME)
    assert_same_rows(got[0], old.__class__(**{**old.__dict__, "search_value": old.value,
                                              "policy_weight": np.ones(len(old), np.float32)}))
    assert_same_rows(got[1], new)
    bad = with_fields(new, search_value=np.full(len(new), 1.5, np.float32))
    with pytest.raises(MessageError, match="search_value: must lie in"):
        from_batch(decode_transitions(bad), GAME)
    bad = with_fields(new, policy_weight=np.full(len(new), -0.5, np.float32))
    with pytest.raises(MessageError, match="policy_weight: must lie in"):
        from_batch(decode_transitions(bad), GAME)


async def test_oversized_message_is_dead_lettered(make_config):
    config = make_config(broker={"max_message_bytes": 600})
    small, large = random_games("tictactoe", games=2, seed=6)
    small = first_rows(small, 1)
    small_msg, large_msg = message(small), message(large)
    assert len(small_msg[1]) <= 600 < len(large_msg[1])
    await publish(config, [small_msg, large_msg])
    await ingest_burst(config)
    dead = await dead_letters(config)
    assert [m.message_id for m in dead] == [large_msg[0]]
    assert "exceeds max_message_bytes (600)" in dead[0].headers[ERROR_HEADER]
    assert_same_rows(await stored(config), small)


# -- (d) acks only after commit --------------------------------------------------------
async def block_database(config, allow: bool) -> None:
    """Make the test's database refuse connections (and drop the open ones), or allow
    them again: the database "goes away" for the ingest service."""
    name = config.storage.postgres_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(config.storage.postgres_url.rsplit("/", 1)[0] + "/postgres")
    try:
        await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(allow).lower()}')
        if not allow:
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
    finally:
        await admin.close()


async def ingest_facing_a_database_outage(config, games, stop: asyncio.Event):
    """An ingest that is consuming when the database goes away, then receives `games`
    and has failed to store them twice: (service, its running task)."""
    ingest = IngestService(config)
    running = asyncio.create_task(ingest.run(stop))
    await asyncio.wait_for(ingest.consuming.wait(), TIMEOUT_S)  # store open, consuming
    await block_database(config, allow=False)
    await publish(config, [message(g) for g in games])
    await until(lambda: ingest.stats.write_failures >= 2, "the flush to be retried")
    return ingest, running


async def test_nothing_is_acked_before_commit_and_a_stop_hands_everything_back(make_config):
    config = make_config()
    games = random_games("tictactoe", games=5, seed=7)
    stop = asyncio.Event()
    try:
        ingest, running = await ingest_facing_a_database_outage(config, games, stop)
        assert await queue_depth(config) == 0  # all delivered to ingest, none acked: held
        stop.set()
        await asyncio.wait_for(running, TIMEOUT_S)
    finally:
        stop.set()
        await block_database(config, allow=True)
    assert ingest.stats.rows == 0 and ingest.stats.settled == 0
    assert await queue_depth(config) == 5  # handed back, not acked
    assert len(await stored(config)) == 0

    # The database is back: the same messages land, once.
    again = await ingest_burst(config)
    assert again.stats.rows == sum(len(g) for g in games)
    assert_same_rows(await stored(config), Transitions.concat(games))
    assert await queue_depth(config) == 0


async def test_a_flush_is_retried_until_the_database_returns(make_config):
    config = make_config()
    games = random_games("tictactoe", games=5, seed=8)
    stop = asyncio.Event()
    running = None
    try:
        ingest, running = await ingest_facing_a_database_outage(config, games, stop)
        assert ingest.stats.settled == 0
        await block_database(config, allow=True)
        await until(lambda: ingest.stats.settled == 5, "the messages to be stored")
    finally:
        stop.set()
        await block_database(config, allow=True)
        if running is not None:
            await asyncio.wait_for(running, TIMEOUT_S)
    assert_same_rows(await stored(config), Transitions.concat(games))
    assert await queue_depth(config) == 0 and ingest.stats.duplicates == 0


async def test_a_commit_stuck_for_good_ends_ingest_and_says_where_it_waits(make_config, monkeypatch, caplog):
    """A commit that neither finishes nor fails (here the batch ledger is locked by
    another session) ends the service with `IngestStalled` and every task's stack in the
    log, instead of stalling every actor behind the queue; its messages go back to the
    queue and the next ingest stores them once."""
    monkeypatch.setattr(ingest_module, "COMMIT_STALL_S", 1.0)
    monkeypatch.setattr(ingest_module, "STALL_CHECK_S", 0.1)
    config = make_config()
    games = random_games("tictactoe", games=3, seed=9)
    ingest = IngestService(config)
    running = asyncio.create_task(ingest.run(asyncio.Event()))
    await asyncio.wait_for(ingest.consuming.wait(), TIMEOUT_S)  # its store is open
    locker = await asyncpg.connect(config.storage.postgres_url)
    try:
        async with locker.transaction():
            await locker.execute(f'LOCK TABLE "{config.storage.replay_table}_batches" IN ACCESS EXCLUSIVE MODE')
            await publish(config, [message(g) for g in games])
            with pytest.raises(ExceptionGroup) as raised:
                await asyncio.wait_for(running, TIMEOUT_S)
    finally:
        running.cancel()
        await locker.close()
    assert raised.group_contains(ingest_module.IngestStalled)
    assert "neither finished nor failed" in caplog.text
    assert "in _store_and_ack" in caplog.text and "replay/postgres.py" in caplog.text  # the await chain, deep
    assert await queue_depth(config) == 3  # unacked: back in the queue
    again = await ingest_burst(config)
    assert again.stats.rows == sum(len(g) for g in games)
    assert_same_rows(await stored(config), Transitions.concat(games))


# -- (e) topology ----------------------------------------------------------------------
async def test_declaring_the_topology_again_is_idempotent(make_config):
    config = make_config()
    b = config.broker
    connection = await connect(b, name="test topology")
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        first = await declare_topology(channel, b)
        await channel.default_exchange.publish(
            aio_pika.Message(b"kept", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=b.transitions_queue)
        second = await declare_topology(channel, b)
        assert second.transitions_queue.name == first.transitions_queue.name == b.transitions_queue
    # Again from other connections, as each service does at start-up, including the bus
    # the services use: same arguments, nothing lost.
    other = await connect(b, name="test topology 2")
    async with other:
        await declare_topology(await other.channel(), b)
    async with RabbitBus(b, name="test bus"):
        pass
    assert await queue_depth(config) == 1
    # The queue really is the quorum queue with the dead-letter exchange: declaring it
    # any other way is refused.
    plain = await aio_pika.connect(b.url)
    async with plain:
        with pytest.raises(ChannelPreconditionFailed):
            await (await plain.channel()).declare_queue(b.transitions_queue, durable=True)


async def test_connect_retries_then_gives_up_without_showing_the_password(make_config, caplog):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = make_config(broker={"url": f"amqp://guest:s3cret@127.0.0.1:{port}/", "connect_attempts": 2})
    with pytest.raises(ConnectionError, match="after 2 attempts") as raised:
        await connect(config.broker, name="test")
    assert "s3cret" not in str(raised.value) and "guest:***@" in str(raised.value)
    retries = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(retries) == 1 and "s3cret" not in retries[0]


async def test_every_event_subscriber_gets_every_event(make_config):
    config = make_config()
    connection = await connect(config.broker, name="test events")
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        topology = await declare_topology(channel, config.broker)
        queues = [await bind_event_queue(await connection.channel(), config.broker) for _ in range(2)]
        assert queues[0].name != queues[1].name
        await topology.models_exchange.publish(
            aio_pika.Message(b'{"type": "reload"}', content_type=CONTENT_TYPE_JSON), routing_key="")
        for queue in queues:
            msg = await queue.get(timeout=TIMEOUT_S, no_ack=True)
            assert msg.body == b'{"type": "reload"}' and msg.content_type == CONTENT_TYPE_JSON


# -- (f) schema ------------------------------------------------------------------------
async def test_creating_the_database_and_migrating_is_idempotent(make_config, postgres_url):
    # A database that does not exist yet, opened by two services at the same moment.
    url = postgres_url + "_fresh"
    config = make_config(storage={"postgres_url": url})
    admin = await asyncpg.connect(postgres_url.rsplit("/", 1)[0] + "/postgres")
    try:
        replays = [open_replay(config.storage, GAME) for _ in range(2)]
        await asyncio.gather(*(r.__aenter__() for r in replays))
        try:
            rows = random_games("tictactoe", games=1, seed=9)[0]
            result = await replays[0].write([("batch-1", "tictactoe", "test", rows)])
            assert result.inserted_rows == len(rows) and result.duplicate_batches == 0
        finally:
            await asyncio.gather(*(r.__aexit__(None, None, None) for r in replays))
        # Opened (and so migrated) again: the data and the schema are untouched.
        async with open_replay(config.storage, GAME) as replay:
            assert await replay.count("tictactoe") == len(rows)
            assert (await replay.write([("batch-1", "tictactoe", "test", rows)])).duplicate_batches == 1
        conn = await asyncpg.connect(url)
        try:
            tables = await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1")
            columns = await conn.fetch(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_name = 'transitions' ORDER BY ordinal_position")
        finally:
            await conn.close()
        assert [t["table_name"] for t in tables] == [
            "transitions", "transitions_batches", "transitions_dropped",  # the first partitions:
            "transitions_p0", "transitions_p100000", "transitions_p200000"]
        assert [(c["column_name"], c["data_type"]) for c in columns] == [
            ("id", "bigint"), ("env_id", "text"), ("game_id", "uuid"), ("ply", "smallint"),
            ("actor_id", "text"), ("model_version", "integer"), ("created_at", "timestamp with time zone"),
            ("observation", "bytea"), ("legal_mask", "bytea"), ("policy", "bytea"), ("value", "real"),
            ("search_value", "real"), ("policy_weight", "real")]
    finally:
        name = url.rsplit("/", 1)[1]
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# -- the command -----------------------------------------------------------------------
def command_args(config, tmp_path) -> list[str]:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    b = config.broker
    sets = {
        "common.env_id": "tictactoe", "common.log_level": "INFO",
        "storage.postgres_url": config.storage.postgres_url, "broker.url": b.url,
        "broker.transitions_queue": b.transitions_queue, "broker.dead_letter_exchange": b.dead_letter_exchange,
        "broker.dead_letter_queue": b.dead_letter_queue, "broker.models_exchange": b.models_exchange,
        "broker.heartbeats": b.heartbeats, "ingest.flush_ms": "50",
    }
    args = [sys.executable, "-m", "services.ingest", "--config", str(empty)]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    return args


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CARTRIDGE_")}


async def test_the_command_stores_until_sigterm_then_exits_cleanly(make_config, tmp_path):
    config = make_config()
    games = random_games("tictactoe", games=3, seed=10)
    await publish(config, [message(g) for g in games])
    process = await asyncio.create_subprocess_exec(
        *command_args(config, tmp_path), cwd=REPO, env=clean_env(), stderr=subprocess.PIPE)
    try:
        async with open_replay(config.storage, GAME) as replay:
            total = sum(len(g) for g in games)
            async with asyncio.timeout(TIMEOUT_S):
                while await replay.count("tictactoe") < total:
                    await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    assert b"SIGTERM received" in stderr and b"ingest stopped" in stderr
    assert_same_rows(await stored(config), Transitions.concat(games))


async def test_the_command_burst_mode_and_configuration_errors(make_config, tmp_path):
    config = make_config()
    games = random_games("tictactoe", games=2, seed=11)
    await publish(config, [message(g) for g in games])
    done = subprocess.run(command_args(config, tmp_path) + ["--burst"], cwd=REPO, env=clean_env(),
                          capture_output=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr.decode()
    assert_same_rows(await stored(config), Transitions.concat(games))

    bad = subprocess.run(command_args(config, tmp_path) + ["--set", "ingest.flush_rows=0"], cwd=REPO,
                         env=clean_env(), capture_output=True, timeout=TIMEOUT_S)
    assert bad.returncode == 2 and b"flush_rows" in bad.stderr


async def test_binary_copy_keeps_every_column_across_mixed_messages(make_config):
    """The numpy-built COPY stream: messages with actor ids of different lengths (and an
    empty one) in one flush land with exactly their own values."""
    config = make_config()
    games = random_games("tictactoe", games=4, seed=11)
    batches = [(f"b{i}", "tictactoe", actor, g) for i, (actor, g) in enumerate(zip(["a", "actor-two", "", "a"], games))]
    async with open_replay(config.storage, get_game("tictactoe")) as replay:
        result = await replay.write(batches)
    assert result.inserted_rows == sum(len(g) for g in games)
    # Rows are grouped by id lengths (in order of first appearance) to build the stream.
    assert_same_rows(await stored(config), Transitions.concat([games[0], games[3], games[1], games[2]]))
    conn = await asyncpg.connect(config.storage.postgres_url)
    try:
        actors = await conn.fetch(f"SELECT actor_id, count(*) AS n FROM {config.storage.replay_table}"
                                  " GROUP BY actor_id ORDER BY actor_id")
        envs = await conn.fetchval(f"SELECT array_agg(DISTINCT env_id) FROM {config.storage.replay_table}")
    finally:
        await conn.close()
    assert {r["actor_id"]: r["n"] for r in actors} == {
        "": len(games[2]), "a": len(games[0]) + len(games[3]), "actor-two": len(games[1])}
    assert envs == ["tictactoe"]
