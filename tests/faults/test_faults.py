"""Fault injection: nothing lost, nothing doubled, every service recovers by itself.

Each scenario runs a small live pipeline (ingest, two actors, a trainer, as processes)
against the real RabbitMQ, PostgreSQL and S3 server, each reached through a `TcpProxy`
so a server can be "restarted" without disturbing anything else. It injects the fault,
waits for the pipeline to make end-to-end progress again (a game confirmed after the
fault is in PostgreSQL; the trainer publishes a newer model), then audits: every
position the actors had confirmed is in PostgreSQL exactly once and no game is
half-stored. Each prints one `FAULT ...` line (run with `-s` to see them):
    pytest -m faults -s
"""

from __future__ import annotations

import asyncio
import re
import signal

import aio_pika
import pytest

from shared.messages import ReloadRequest, encode_event
from shared.model_store import ServingPointer, open_model_store
from tests.faults.live import Audit, LivePipeline, env_for
from tests.faults.proxy import TcpProxy

pytestmark = pytest.mark.faults

OUTAGE_S = 6.0
DRAIN_LIMIT_S = 30.0  # a SIGTERM'd service must be gone within this


@pytest.fixture
async def proxies(s3_endpoint):
    s3_host, s3_port = s3_endpoint.removeprefix("http://").split(":")
    found = {
        "postgres": await TcpProxy("127.0.0.1", 5432).start(),
        "rabbitmq": await TcpProxy("127.0.0.1", 5672).start(),
        "s3": await TcpProxy(s3_host, int(s3_port)).start(),
    }
    yield found
    for proxy in found.values():
        await proxy.close()


@pytest.fixture
def config(make_config):
    return make_config(
        mcts={"num_simulations": 8},
        actor={"parallel_games": 16},
        training={"steps_per_iteration": 20, "batch_size": 32, "min_transitions": 300},
        ingest={"flush_ms": 100},
    )


@pytest.fixture
async def pipeline(config, proxies, tmp_path):
    live = LivePipeline(config, tmp_path, proxies, env_for(config, proxies))
    yield live
    for name, service in live.services.items():
        if live.running(name):
            service.process.kill()
            await service.process.wait()


async def start(p: LivePipeline, *, ingest_env: dict | None = None, trainer_env: dict | None = None) -> None:
    """ingest, two actors and a trainer, running until a few hundred rows are stored."""
    p.add("ingest", "ingest", **(ingest_env or {}))
    p.add("actor-1", "actor")
    p.add("actor-2", "actor")
    p.add("trainer", "trainer", **(trainer_env or {}))
    await p.start_all()
    await p.wait_for_more_rows(300)


async def published(p: LivePipeline, name: str = "trainer") -> list[int]:
    return [int(v) for v in re.findall(r"published model (\d+)", p.services[name].log())]


async def wait_for_model(p: LivePipeline, newer_than: int, timeout: float = 120.0) -> float:
    async def newer() -> bool:
        return max(await published(p), default=0) > newer_than
    return await p.wait_for(f"a model newer than {newer_than}", newer, timeout)


async def end_to_end_progress(p: LivePipeline, timeout: float = 90.0) -> float:
    """Seconds until a game confirmed from now on is stored: actors, broker, ingest and
    PostgreSQL all work again."""
    before = set(p.confirmed())
    fresh: list[str] = []

    def new_confirmed() -> bool:
        fresh[:] = [g for g in p.confirmed() if g not in before]
        return bool(fresh)

    async def fresh_stored() -> bool:
        return await _stored(p, fresh[0])

    t1 = await p.wait_for("an actor to publish again", new_confirmed, timeout)
    t2 = await p.wait_for("a new game in PostgreSQL", fresh_stored, timeout)
    return t1 + t2


async def _stored(p: LivePipeline, game: str) -> bool:
    import asyncpg
    conn = await asyncpg.connect(p.config.storage.postgres_url)
    try:
        return bool(await conn.fetchval(
            f"SELECT count(*) FROM {p.config.storage.replay_table} WHERE game_id = $1::uuid", game))
    finally:
        await conn.close()


def check(audit: Audit, fault: str, recovery_s: float) -> None:
    print(audit.line(fault, recovery_s))
    assert audit.produced > 0, "the actors confirmed nothing"
    assert audit.lost == 0, audit
    assert audit.duplicated == 0, audit
    assert audit.half_stored == 0, audit


async def finish(p: LivePipeline, fault: str, recovery_s: float) -> None:
    """Everyone still alive and publishing models; then the accounting."""
    p.assert_alive()
    await wait_for_model(p, newer_than=max(await published(p), default=0))
    audit = await p.settle_and_audit()
    codes = await p.stop_all()
    check(audit, fault, recovery_s)
    assert all(code == 0 for code in codes.values()), codes


def outage_lines(p: LivePipeline, name: str, dependency: str) -> tuple[int, int]:
    """How many times `name` logged losing `dependency` (a WARNING) and having it back
    (an INFO line); `dependency` is a regex for the name the back end logs it under."""
    text = p.services[name].log()
    lost = re.findall(rf"^\S+ \S+ WARNING \S+: lost {dependency} \(", text, re.M)
    back = re.findall(rf"^\S+ \S+ INFO \S+: {dependency} back after \d+ s$", text, re.M)
    return len(lost), len(back)


def assert_quiet(p: LivePipeline) -> None:
    """No traceback and no line of the connection libraries in any service's log: what
    they report is DEBUG detail (`common.log_level` here is INFO)."""
    for name, service in p.services.items():
        text = service.log()
        assert "Traceback" not in text, f"{name}: {text[-3000:]}"
        noise = re.findall(r"^\S+ \S+ \w+ (?:aio_pika|aiormq|asyncpg)\S*: .*$", text, re.M)
        assert not noise, f"{name}: {noise[:5]}"


def publish_retries(p: LivePipeline, actor: str) -> int:
    """Publishes `actor` tried again, from the line it logs when it stops."""
    return sum(int(n) for n in re.findall(r"(\d+) publishes retried", p.services[actor].log()))


async def queue_depth(config) -> int:
    """Messages ready in the transitions queue, asked of RabbitMQ directly."""
    connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
    async with connection:
        channel = await connection.channel()
        raw = await channel.get_underlay_channel()
        return (await raw.queue_declare(config.broker.transitions_queue, passive=True)).message_count


# -- 1. RabbitMQ --------------------------------------------------------------------


async def test_rabbitmq_restart(pipeline, proxies, config):
    p = pipeline
    await start(p)
    await wait_for_model(p, newer_than=1)
    actors = ("actor-1", "actor-2")
    for a in actors:  # every actor past model 1, so that serving 1 again shows
        await p.wait_for(f"{a} on model 2 or newer", lambda a=a: max(updates(p, a), default=0) >= 2)

    await proxies["rabbitmq"].cut()  # every connection dropped, new ones refused
    # A rollback decided while the broker is away (the evaluator's serving pointer): no
    # actor can hear of it, so each one asks the store when it is back.
    async with open_model_store(config.storage) as store:
        await store.put_serving(config.common.env_id, ServingPointer(version=1, hold=True, reason="fault test"))
    await asyncio.sleep(OUTAGE_S)
    await proxies["rabbitmq"].restore()
    for a in actors:
        await p.wait_for(f"{a} to serve the held model 1 after reconnecting",
                         lambda a=a: "Model updated to version 1 (caught up after a reconnect" in p.services[a].log())
    recovery = await end_to_end_progress(p)
    for name in p.services:  # every service had the broker back (before they stop)
        await p.wait_for(f"{name} to have RabbitMQ back", lambda n=name: outage_lines(p, n, r"RabbitMQ at \S+")[1])
    await finish(p, "rabbitmq restart", recovery)
    # The outage was real: publishes failed and were retried under the same batch id.
    assert any(publish_retries(p, a) > 0 for a in ("actor-1", "actor-2"))
    for a in actors:  # still holding: the models published since were not served
        assert updates(p, a)[-1] == 1, updates(p, a)
    # One line when the broker was lost and one when it was back, per service.
    for name in p.services:
        assert outage_lines(p, name, r"RabbitMQ at \S+") == (1, 1), f"{name}: {p.services[name].log()[-3000:]}"
    assert_quiet(p)


# -- 2. PostgreSQL ------------------------------------------------------------------


async def test_postgres_unreachable_while_ingest_flushes(pipeline, proxies, config):
    p = pipeline
    # A small prefetch: during the outage the backlog must stay in the queue (unacked).
    await start(p, ingest_env={"CARTRIDGE_INGEST_PREFETCH": "32"})

    await proxies["postgres"].cut()
    rows_at_cut = await p.rows()
    depth_at_cut = await queue_depth(config)
    await asyncio.sleep(OUTAGE_S)
    depth_in_outage = await queue_depth(config)
    rows_in_outage = await p.rows()  # read directly, not through the proxy
    await proxies["postgres"].restore()

    assert rows_in_outage == rows_at_cut  # nothing could be written...
    assert depth_in_outage > depth_at_cut  # ...so nothing was acked: it waits in the queue
    assert "retry" in p.services["ingest"].log()
    recovery = await end_to_end_progress(p)
    await finish(p, "postgres unreachable", recovery)
    # Ingest met the outage; the trainer may have (if it read the replay meanwhile). Each
    # logged it once lost and once back; the actors never talk to PostgreSQL.
    pg = r"PostgreSQL at \S+"
    assert outage_lines(p, "ingest", pg) == (1, 1), p.services["ingest"].log()[-3000:]
    assert outage_lines(p, "trainer", pg) in {(0, 0), (1, 1)}, p.services["trainer"].log()[-3000:]
    assert outage_lines(p, "actor-1", pg) == outage_lines(p, "actor-2", pg) == (0, 0)
    assert_quiet(p)


# -- 3. ingest killed ---------------------------------------------------------------


async def test_ingest_killed_in_a_flush(pipeline):
    p = pipeline
    await start(p)

    # Pause ingest so a backlog builds, resume it, and kill it while it works through it.
    ingest = p.services["ingest"].process
    ingest.send_signal(signal.SIGSTOP)
    await asyncio.sleep(3)
    ingest.send_signal(signal.SIGCONT)
    await asyncio.sleep(0.3)
    await p.kill("ingest")
    await p.start("ingest")
    recovery = await end_to_end_progress(p)
    await finish(p, "ingest SIGKILL mid-flush", recovery)


# -- 4. trainer killed --------------------------------------------------------------


async def test_trainer_killed_mid_cycle(pipeline, config):
    p = pipeline
    # Longer cycles, so the kill lands inside one.
    await start(p, trainer_env={"CARTRIDGE_TRAINING_STEPS_PER_ITERATION": "200"})
    await wait_for_model(p, newer_than=1)
    async with open_model_store(config.storage) as store:
        before = {v: (await store.get_info(config.common.env_id, v)).sha256
                  for v in await store.list_versions(config.common.env_id)}
    await asyncio.sleep(1.0)  # into the next cycle
    await p.kill("trainer")
    killed_at = max(await published(p))

    await p.start("trainer")
    recovery = await wait_for_model(p, newer_than=killed_at)
    log = p.services["trainer"].log()
    assert "resumed from checkpoint" in log
    versions = await published(p)
    assert versions == sorted(set(versions)), f"versions reused or out of order: {versions}"
    async with open_model_store(config.storage) as store:
        after = await store.list_versions(config.common.env_id)
        for v, sha in before.items():  # nothing overwritten
            assert (await store.get_info(config.common.env_id, v)).sha256 == sha
    assert after == sorted(set(after)) and set(before) < set(after)
    # Steps never go back (a model stored after the last checkpoint is re-earned at the
    # same step under a new version number).
    steps = [int(s) for s in re.findall(r"published model \d+ \(step (\d+)", log)]
    assert steps == sorted(steps), steps
    await finish(p, "trainer SIGKILL mid-cycle", recovery)


# -- 5. S3 --------------------------------------------------------------------------


async def test_s3_unavailable(pipeline, proxies, config):
    p = pipeline
    await start(p)
    await wait_for_model(p, newer_than=1)
    actors = ("actor-1", "actor-2")
    for a in actors:  # every actor past model 1, so that a rollback to 1 would show
        await p.wait_for(f"{a} on model 2 or newer", lambda a=a: max(updates(p, a), default=0) >= 2)

    await proxies["s3"].cut()
    log_at_cut = {a: len(p.services[a].log()) for a in actors}
    last_before = max(await published(p))
    # A rollback asked for while S3 is away: the actors cannot fetch it and keep theirs.
    connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(config.broker.models_exchange, ensure=False)
        await exchange.publish(aio_pika.Message(encode_event(
            ReloadRequest(env_id=config.common.env_id, version=1))), routing_key="")
    for a in actors:
        await p.wait_for(f"{a} to report the failed reload",
                         lambda a=a: "cannot load model 1" in p.services[a].log(), timeout=60)
    await p.wait_for("the trainer to retry the store",
                     lambda: "lost S3 endpoint" in p.services["trainer"].log(), timeout=60)
    await asyncio.sleep(OUTAGE_S / 2)
    assert max(await published(p)) == last_before  # nothing could be published meanwhile
    p.assert_alive()
    await proxies["s3"].restore()

    recovery = await wait_for_model(p, newer_than=last_before)
    for a in actors:
        recovery = max(recovery, await p.wait_for(
            f"{a} on a model published after the outage",
            lambda a=a: max(updates(p, a)) > last_before))
        since_cut = updates(p, a, p.services[a].log()[log_at_cut[a]:])
        assert 1 not in since_cut, f"{a} rolled back although the download failed: {since_cut}"
    await finish(p, "s3 unavailable", recovery)


def updates(p: LivePipeline, actor: str, text: str | None = None) -> list[int]:
    text = p.services[actor].log() if text is None else text
    return [int(v) for v in re.findall(r"Model updated to version (\d+)", text)]


# -- 6. an actor killed -------------------------------------------------------------


async def test_actor_killed(pipeline):
    p = pipeline
    await start(p)
    await p.kill("actor-1")  # its games in progress are lost whole; what it confirmed is kept
    recovery = await end_to_end_progress(p)  # actor-2 carries on
    await finish(p, "actor SIGKILL", recovery)


# -- 7. SIGTERM drains --------------------------------------------------------------


async def test_sigterm_drains_every_service(pipeline):
    p = pipeline
    await start(p)
    await wait_for_model(p, newer_than=0)
    drains = {}
    for name in ("ingest", "trainer"):
        code, drains[name] = await p.signal(name, signal.SIGTERM, timeout=DRAIN_LIMIT_S)
        assert code == 0, f"{name} exited {code}: {p.services[name].log()[-2000:]}"
        await p.start(name)
    recovery = await end_to_end_progress(p)
    await wait_for_model(p, newer_than=max(await published(p)))  # the new trainer works too
    for name in ("actor-1", "actor-2"):
        code, drains[name] = await p.signal(name, signal.SIGTERM, timeout=DRAIN_LIMIT_S)
        assert code == 0, f"{name} exited {code}: {p.services[name].log()[-2000:]}"
        assert "stopped" in p.services[name].log()
    audit = await p.settle_and_audit()
    codes = await p.stop_all()
    print("SIGTERM drain seconds: " + ", ".join(f"{n} {s:.1f}" for n, s in drains.items()))
    check(audit, "SIGTERM to every service", recovery)
    assert all(code == 0 for code in codes.values()), codes
