"""Least privilege, on the real RabbitMQ and PostgreSQL: each service's login, made from the
repository's definition files (`cartridge provision`: deploy/rabbitmq/users.toml,
deploy/postgres/roles.sql), does its service's work and is refused the rest. Users and
roles get names unique to the test and are deleted afterwards. The S3 policies
(deploy/minio/) are checked as files: the test S3 server does not enforce them."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import aiohttp
import asyncpg
import pytest
from aiormq.exceptions import ChannelAccessRefused

from cartridge.provision import (
    DATABASE_SERVICES, broker_rights, declare_broker_topology, login, provision_broker_users, provision_postgres_roles,
)
from shared.bus import RabbitBus
from shared.bus.management import api_login, queue_depths
from shared.bus.rabbitmq import TopologyMissing
from shared.config import Config
from shared.evaluations import Evaluation
from shared.evaluations.postgres import PostgresEvaluations
from shared.games import get_game
from shared.heartbeat import HeartbeatSender, read_recent
from shared.model_store import ServingPointer
from shared.model_store.s3 import S3ModelStore
from shared.replay.postgres import PostgresReplay
from tests.helpers import message, play_games

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("actor", "ingest", "trainer", "evaluator", "operator", "web")
GAME = get_game("tictactoe")
EVENT = b'{"type": "reload", "schema_version": 1, "env_id": "tictactoe", "version": null}'


@pytest.fixture
def prefix(test_id: str) -> str:
    return f"t{test_id}_"


@pytest.fixture
def passwords() -> dict[str, str]:
    return {service: uuid.uuid4().hex for service in SERVICES}


@pytest.fixture
async def broker_users(make_config, prefix, passwords):
    """The topology declared as the admin (guest) and one RabbitMQ user per service;
    the users are deleted afterwards (the queues by `broker_names`)."""
    admin = make_config().broker
    await declare_broker_topology(admin)
    made = []
    try:
        made = await provision_broker_users(admin, passwords, prefix=prefix)
        yield made
    finally:
        base, _, auth = api_login(admin)
        async with aiohttp.ClientSession(headers=auth) as http:
            for user in made or [login(s, prefix) for s in SERVICES]:
                async with http.delete(f"{base}/api/users/{quote(user, safe='')}"):
                    pass


@pytest.fixture
async def database_roles(postgres_url, prefix, passwords, make_config):
    """One PostgreSQL role per database service, from roles.sql; its objects and grants
    in the test's database dropped and the roles deleted afterwards."""
    roles = [login(s, prefix) for s in DATABASE_SERVICES]
    try:
        yield await provision_postgres_roles(make_config().storage, passwords, prefix=prefix)
    finally:
        conn = await asyncpg.connect(postgres_url)
        try:
            existing = [r["rolname"] for r in await conn.fetch("SELECT rolname FROM pg_roles WHERE rolname = ANY($1)", roles)]
            for role in existing:  # one at a time: PostgreSQL fails on default ACLs shared by several
                await conn.execute(f'DROP OWNED BY "{role}" CASCADE')
            for role in existing:
                await conn.execute(f'DROP ROLE "{role}"')
        finally:
            await conn.close()


def as_service(make_config, service: str, prefix: str, passwords: dict[str, str], **sections) -> Config:
    """The test's config, logged in as `service` everywhere (broker.declare off, as a
    least-privilege deployment runs)."""
    base = make_config()
    amqp = urlsplit(base.broker.url)
    broker_url = urlunsplit(amqp._replace(netloc=f"{login(service, prefix)}:{passwords[service]}@{amqp.hostname}:{amqp.port}"))
    pg = urlsplit(base.storage.postgres_url)
    pg_url = urlunsplit(pg._replace(netloc=f"{login(service, prefix)}:{passwords[service]}@{pg.hostname}:{pg.port}"))
    broker = {"url": broker_url, "declare": False, **sections.pop("broker", {})}
    storage = {"postgres_url": pg_url, **sections.pop("storage", {})}
    return make_config(broker=broker, storage=storage, **sections)


async def connect_as(config: Config) -> aio_pika.abc.AbstractConnection:
    return await aio_pika.connect(config.broker.url)


async def refused(coroutine) -> None:
    with pytest.raises(ChannelAccessRefused):
        await coroutine


# -- the definition files ----------------------------------------------------------------

def test_every_service_has_broker_rights_and_the_admin_is_not_one_of_them(make_config):
    rights = broker_rights(make_config().broker)
    assert set(rights) == set(SERVICES)
    assert not any(r[k] in (".*", "") for r in rights.values() for k in ("configure", "write", "read"))
    # Only the actor declares anything (its own private event queue).
    assert [s for s, r in rights.items() if r["configure"] != "^$"] == ["actor"]


# -- RabbitMQ and PostgreSQL: refused ----------------------------------------------------

async def test_an_actor_cannot_delete_the_transitions_queue_nor_read_the_replay(
        make_config, broker_users, database_roles, prefix, passwords, broker_names):
    actor = as_service(make_config, "actor", prefix, passwords)
    connection = await connect_as(actor)
    async with connection:
        await refused((await connection.channel()).queue_delete(broker_names["transitions_queue"]))
        queue = await (await connection.channel()).declare_queue(broker_names["transitions_queue"], passive=True)
        await refused(queue.purge())
        # Nor consume the games of others, nor declare over the admin's queue.
        queue = await (await connection.channel()).declare_queue(broker_names["transitions_queue"], passive=True)
        await refused(queue.get(no_ack=True, fail=False))
        await refused((await connection.channel()).declare_queue(broker_names["transitions_queue"], durable=True))
        # Nor announce a model.
        channel = await connection.channel(publisher_confirms=True)
        models = await channel.get_exchange(broker_names["models_exchange"])
        await refused(models.publish(aio_pika.Message(EVENT), routing_key=""))
    admin = await aio_pika.connect(make_config().broker.url)
    async with admin:
        await (await admin.channel()).declare_queue(broker_names["transitions_queue"], passive=True)  # still there

    # The actor has no database login at all: its name is no role of PostgreSQL.
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
        await asyncpg.connect(actor.storage.postgres_url)
    # A login of the database without a grant on the replay (the web page's) cannot read it.
    async with PostgresReplay(make_config().storage, GAME) as replay:  # created as ingest would
        pass
    web = await asyncpg.connect(as_service(make_config, "web", prefix, passwords).storage.postgres_url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await web.fetch("SELECT * FROM transitions LIMIT 1")
    finally:
        await web.close()


async def test_each_login_is_refused_what_is_not_its_work(make_config, broker_users, database_roles, prefix,
                                                          passwords, broker_names):
    config = {s: as_service(make_config, s, prefix, passwords) for s in SERVICES}
    # Broker: nobody but the admin deletes a queue; only ingest consumes transitions; only
    # the trainer, the evaluator and the operator announce; ingest alone dead-letters.
    for service in ("ingest", "trainer", "evaluator", "operator", "web"):
        connection = await connect_as(config[service])
        async with connection:
            for queue in (broker_names["transitions_queue"], broker_names["dead_letter_queue"], broker_names["heartbeats"]):
                await refused((await connection.channel()).queue_delete(queue))
            if service != "ingest":
                queue = await (await connection.channel()).declare_queue(broker_names["transitions_queue"], passive=True)
                await refused(queue.get(no_ack=True, fail=False))
                channel = await connection.channel(publisher_confirms=True)
                dlx = await channel.get_exchange(broker_names["dead_letter_exchange"])
                await refused(dlx.publish(aio_pika.Message(b"x"), routing_key=broker_names["transitions_queue"]))
            if service in ("ingest", "web"):
                channel = await connection.channel(publisher_confirms=True)
                models = await channel.get_exchange(broker_names["models_exchange"])
                await refused(models.publish(aio_pika.Message(EVENT), routing_key=""))
            if service != "evaluator":
                queue = await (await connection.channel()).declare_queue(broker_names["evaluator_queue"], passive=True)
                await refused(queue.get(no_ack=True, fail=False))

    # Database: the tables as their owners make them.
    async with PostgresReplay(config["ingest"].storage, GAME), PostgresEvaluations(config["evaluator"].storage):
        pass
    denied = {
        "trainer": ["INSERT INTO transitions_batches (batch_id, rows) VALUES ('x', 1)", "DELETE FROM transitions",
                    "DROP TABLE transitions", "SELECT * FROM evaluations", "CREATE TABLE mine (x int)"],
        "web": ["SELECT * FROM transitions", "INSERT INTO serving (env_id, version, hold, reason, decided_at)"
                " VALUES ('tictactoe', 1, true, 'x', 0)", "DELETE FROM evaluations", "CREATE TABLE mine (x int)"],
        "evaluator": ["SELECT * FROM transitions", "DELETE FROM transitions_batches", "DROP TABLE transitions"],
        "ingest": ["SELECT * FROM evaluations", "DELETE FROM serving", "DROP TABLE rating_games"],
    }
    for service, statements in denied.items():
        conn = await asyncpg.connect(config[service].storage.postgres_url)
        try:
            for sql in statements:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(sql)
        finally:
            await conn.close()


async def test_least_privilege_services_need_the_admins_topology(make_config, broker_names):
    """With `broker.declare` off a service declares nothing: before the admin has declared
    the topology it stops with a clear error naming what is missing (guest here: the same
    passive check any login makes)."""
    config = make_config(broker={"declare": False})
    with pytest.raises(TopologyMissing, match=broker_names["transitions_queue"]):
        async with RabbitBus(config.broker, name="test"):
            pass


# -- RabbitMQ and PostgreSQL: allowed ----------------------------------------------------

async def test_each_login_does_its_services_work(make_config, broker_users, database_roles, prefix, passwords,
                                                 broker_names, caplog):
    config = {s: as_service(make_config, s, prefix, passwords) for s in SERVICES}
    games = play_games("tictactoe", games=2)
    batch_id, body = message(games[0])

    # The actor subscribes to events and publishes a game; a trainer's event reaches it
    # and, through its durable queue (declared by the admin), the evaluator that was away.
    async with RabbitBus(config["actor"].broker, name="actor") as actor, \
            RabbitBus(config["trainer"].broker, name="trainer") as trainer, \
            RabbitBus(config["operator"].broker, name="operator") as operator:
        events = await actor.subscribe_events()
        await actor.publish_transitions(body, message_id=batch_id)
        await trainer.publish_event(EVENT)
        await operator.publish_event(EVENT)
        assert [await asyncio.wait_for(anext(events), 30) for _ in range(2)] == [EVENT, EVENT]
    async with RabbitBus(config["evaluator"].broker, name="evaluator") as evaluator:
        waiting = await evaluator.subscribe_events(durable_queue=broker_names["evaluator_queue"])
        assert await asyncio.wait_for(anext(waiting), 30) == EVENT
        await evaluator.publish_event(EVENT)

    # Ingest takes the game, stores it (creating the replay as its owner), dead-letters
    # garbage, runs retention; the trainer reads what it stored.
    async with RabbitBus(config["ingest"].broker, name="ingest") as ingest, \
            PostgresReplay(config["ingest"].storage, GAME) as replay:
        deliveries = await ingest.consume_transitions(prefetch=10)
        delivery = await asyncio.wait_for(anext(deliveries), 30)
        assert delivery.message_id == batch_id
        result = await replay.write([(batch_id, "tictactoe", "test", games[0])])
        assert result.inserted_rows == len(games[0])
        # Ingest does not own the database: with autovacuum off it says the catalogs'
        # VACUUM is left out (the server would skip it) rather than send it in vain.
        assert not replay.may_vacuum_catalogs
        assert replay.self_vacuum == ("catalogs' VACUUM is left out" in caplog.text)
        await delivery.ack()
        assert await replay.enforce_retention() == []
        assert await ingest.pending_transitions() == 0
    async with PostgresReplay(config["trainer"].storage, GAME) as reader:
        assert await reader.count("tictactoe") == len(games[0])
        _, rows = await reader.fetch_newest("tictactoe", 100)
        assert len(rows) == len(games[0])

    # The evaluator records its results; the web page reads them.
    async with PostgresEvaluations(config["evaluator"].storage) as results:
        await results.record("tictactoe", Evaluation(env_id="tictactoe", version=1, status="ok"))
        await results.record_serving("tictactoe", ServingPointer(version=1))
    async with PostgresEvaluations(config["web"].storage) as page:
        assert [e.version for e in await page.evaluations("tictactoe")] == [1]
        assert len(await page.servings("tictactoe")) == 1
        assert await page.games("tictactoe") == []

    # Heartbeats: a service sends them, the web page and the operator read them and the
    # queue depths (management API).
    sender = HeartbeatSender(config["ingest"], lambda: _status())
    assert await sender.send()
    for reader_ in ("web", "operator"):
        beats = await read_recent(config[reader_].broker, 60, limit_s=5)
        assert any(b.status.name == "privileges-test" for b in beats), reader_
        depths = await queue_depths(config[reader_].broker)
        assert [q["name"] for q in depths] == [broker_names["transitions_queue"], broker_names["dead_letter_queue"]]
    await sender.__aexit__(None, None, None)


async def test_ingest_dead_letters_with_its_own_login(make_config, broker_users, prefix, passwords, broker_names):
    config = {s: as_service(make_config, s, prefix, passwords) for s in ("actor", "ingest")}
    async with RabbitBus(config["actor"].broker, name="actor") as actor:
        await actor.publish_transitions(b"not a batch", message_id="g" * 32)
    async with RabbitBus(config["ingest"].broker, name="ingest") as ingest:
        deliveries = await ingest.consume_transitions(prefetch=10)
        delivery = await asyncio.wait_for(anext(deliveries), 30)
        await delivery.dead_letter("undecodable")
        assert await ingest.dead_letter_depth() == 1


def _status():
    from shared.status import IngestStatus

    return IngestStatus(name="privileges-test", state="running", messages=0, rows=0, duplicates=0,
                        dead_lettered=0, flushes=0, write_failures=0, settled=0, actor_models={})


# -- S3: the policies as files -----------------------------------------------------------

POLICIES = {s: json.loads((ROOT / "deploy" / "minio" / f"{s}.json").read_text()) for s in SERVICES if s != "ingest"}
ACTIONS = {"get_object": "s3:GetObject", "head_object": "s3:GetObject", "put_object": "s3:PutObject",
           "delete_object": "s3:DeleteObject", "list_objects_v2": "s3:ListBucket", "head_bucket": "s3:ListBucket"}


def allows(policy: dict, action: str, resource: str) -> bool:
    """IAM's rule for Allow-only policies: some statement names the action and a resource
    pattern (`*` matches any run of characters, `/` included) that matches."""
    return any(s["Effect"] == "Allow" and action in s["Action"]
               and any(fnmatch.fnmatchcase(resource, pattern) for pattern in s["Resource"])
               for s in policy["Statement"])


class Recorded(S3ModelStore):
    """The store, noting every S3 call as (IAM action, ARN) in `calls`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, str]] = []

    async def _call(self, method, **kwargs):
        arn = "arn:aws:s3:::cartridge" + (f"/{kwargs['Key']}" if "Key" in kwargs else "")
        self.calls.append((ACTIONS[method.__name__], arn))
        return await super()._call(method, **kwargs)


async def work_of(service: str, store: S3ModelStore) -> None:
    """What each service asks of the model store (the methods its code calls)."""
    env, limit = "tictactoe", 1 << 20
    if service == "trainer":
        for version in (1, 2):
            await store.put_model(env, version, b"model %d" % version, step=version)
            await store.put_checkpoint(env, version, b"state")
        await store.prune_checkpoints(env, keep=1)
        await store.latest_checkpoint(env)
        await store.list_versions(env)
    elif service == "actor":
        info = await store.latest(env)
        await store.get_model(env, None, max_bytes=limit)
        await store.get_model(env, 1, max_bytes=limit, expected=None)
        await store.get_model(env, info.version, max_bytes=limit, expected=info)
        await store.serving(env)
    elif service == "evaluator":
        await store.get_model(env, 2, max_bytes=limit)
        await store.list_versions(env)
        await store.serving(env)
        await store.put_serving(env, ServingPointer(version=1, hold=True, reason="rollback"))
    elif service == "operator":
        await store.latest(env)
        await store.serving(env)
        await store.put_serving(env, ServingPointer(version=2, reason="cartridge reload"))
    elif service == "web":
        await store.list_versions(env)
        await store.get_info(env, 2)
        await store.get_model(env, 2, max_bytes=limit)


async def test_s3_policies_cover_each_services_calls_and_writes_are_the_owners_alone(make_config):
    storage = make_config().storage
    async with S3ModelStore(storage):  # the bucket, as minio-init makes it
        pass
    calls = {}
    for service in ("trainer", "actor", "evaluator", "operator", "web"):
        async with Recorded(storage) as store:
            await work_of(service, store)
            calls[service] = store.calls
    for service, made in calls.items():
        missing = [c for c in made if not allows(POLICIES[service], *c)]
        assert not missing, (service, missing)
    # Each write is allowed to the role that owns the key, and to no other.
    owners = {"models": {"trainer"}, "latest.json": {"trainer"}, "checkpoints": {"trainer"},
              "serving.json": {"evaluator", "operator"}}
    writes = {c for made in calls.values() for c in made if c[0] in ("s3:PutObject", "s3:DeleteObject")}
    assert {arn.split("/")[2] for _, arn in writes} == set(owners)
    for action, arn in writes:
        allowed = {s for s, policy in POLICIES.items() if allows(policy, action, arn)}
        assert allowed == owners[arn.split("/")[2]], (action, arn, allowed)
    # Checkpoints (the trainer's state) are the trainer's alone to read; nobody may read
    # or write outside the bucket, or use a wildcard action.
    checkpoint = "arn:aws:s3:::cartridge/tictactoe/checkpoints/00000002.pt"
    assert {s for s, p in POLICIES.items() if allows(p, "s3:GetObject", checkpoint)} == {"trainer"}
    for policy in POLICIES.values():
        for statement in policy["Statement"]:
            assert statement["Effect"] == "Allow" and not any("*" in a for a in statement["Action"])
            assert all(r == "arn:aws:s3:::cartridge" or r.startswith("arn:aws:s3:::cartridge/")
                       for r in statement["Resource"])
