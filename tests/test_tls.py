"""TLS as a config switch, on the real RabbitMQ, PostgreSQL and S3 server, each behind a
TLS-terminating proxy on loopback with a CA made for the test (tests/tls_proxy.py): actors'
and ingest's traffic over `amqps://` into PostgreSQL over `sslmode=verify-full`, heartbeats
and the management API over TLS, the model store over `https://`; and a certificate that
is not trusted stops the connection with one line naming the endpoint and the setting,
before a byte reaches the server (nothing falls back to plaintext)."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

import pytest

from services.ingest.service import IngestService
from shared.bus import open_bus
from shared.bus.management import queue_depths
from shared.games import get_game
from shared.games.random_play import random_games
from shared.heartbeat import HeartbeatSender, read_recent
from shared.model_store import open_model_store
from shared.replay import open_replay
from shared.retry import DependencyError, Refused
from shared.status import IngestStatus
from shared.transitions import Transitions
from tests.helpers import message, wait_until
from tests.tls_proxy import Pki, TlsProxy, make_pki

GAME = get_game("tictactoe")
TIMEOUT_S = 60  # only guards against a hang


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@contextlib.asynccontextmanager
async def tls_in_front_of(url: str, pki: Pki, *, postgres: bool = False):
    """A TLS endpoint on loopback forwarding to the plain server `url` names."""
    target = urlsplit(url)
    proxy = await TlsProxy(target.hostname, target.port, pki.server_context(), postgres=postgres).start()
    try:
        yield proxy
    finally:
        await proxy.close()


def postgres_tls_url(plain: str, port: int, ca: str, **extra: str) -> str:
    """The test database's URL, through the proxy, checking the certificate and host name."""
    parts = urlsplit(plain)
    query = "&".join(f"{k}={v}" for k, v in {"sslmode": "verify-full", "sslrootcert": ca, **extra}.items())
    return parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}", query=query).geturl()


async def test_actor_to_ingest_to_postgres_over_tls(make_config, postgres_url, broker_names, pki, test_id):
    """What an actor publishes over `amqps://`, ingest consumes over `amqps://` and stores
    in PostgreSQL over TLS; heartbeats and the management API's queue depths go over TLS
    too."""
    async with (tls_in_front_of(broker_names["url"], pki) as amqps,
                tls_in_front_of("http://127.0.0.1:15672", pki) as management,
                tls_in_front_of(postgres_url, pki, postgres=True) as pg):
        config = make_config(
            broker={"url": f"amqps://guest:guest@127.0.0.1:{amqps.port}/", "ca_file": str(pki.ca),
                    "management_url": f"https://127.0.0.1:{management.port}", "connect_attempts": 2},
            storage={"postgres_url": postgres_tls_url(postgres_url, pg.port, str(pki.ca)), "connect_attempts": 2},
            status={"heartbeat_s": 0.2})
        games = random_games("tictactoe", games=4, seed=3)
        async with open_bus(config.broker, name="tls actor") as actor:
            for game in games:
                batch_id, body = message(game, actor_id="tls-actor")
                await actor.publish_transitions(body, message_id=batch_id)
            # Only that it answers over TLS: its message counts are statistics that lag.
            assert config.broker.transitions_queue in {q["name"] for q in await queue_depths(config.broker)}
        assert amqps.connections >= 1 and management.connections >= 1

        ingest = IngestService(config)
        async with asyncio.timeout(TIMEOUT_S):
            await ingest.run(burst=True)
        assert ingest.stats.messages == len(games) and pg.connections >= 1
        async with open_replay(config.storage, GAME) as replay:
            assert await replay.count("tictactoe") == len(Transitions.concat(games))

        status = IngestStatus(name=f"ingest-{test_id}", state="running", messages=1, rows=9, duplicates=0,
                              dead_lettered=0, flushes=1, write_failures=0, settled=1, actor_models={})
        async with HeartbeatSender(config, lambda: status) as sender:
            await wait_until(lambda: sender.sent >= 1, "a heartbeat over TLS")
        beats = await read_recent(config.broker, 60)
        assert status.name in {b.status.name for b in beats}


@pytest.mark.parametrize("negotiation", ["postgres", "direct"])
async def test_postgres_tls_negotiated_or_direct(make_config, postgres_url, pki, negotiation):
    """`sslmode=verify-full` starts TLS inside PostgreSQL's protocol (SSLRequest);
    `sslnegotiation=direct` (PostgreSQL 17) from the first byte: both are URL parameters."""
    direct = negotiation == "direct"
    async with tls_in_front_of(postgres_url, pki, postgres=not direct) as pg:
        extra = {"sslnegotiation": "direct"} if direct else {}
        config = make_config(storage={"postgres_url": postgres_tls_url(postgres_url, pg.port, str(pki.ca), **extra)})
        async with open_replay(config.storage, GAME) as replay:
            game = random_games("tictactoe", games=1, seed=5)[0]
            await replay.write([("tls-batch", "tictactoe", "tls-actor", game)])
            assert await replay.count("tictactoe") == len(game)
        assert pg.connections >= 1


async def test_model_store_over_https(make_config, s3_endpoint, pki):
    async with tls_in_front_of(s3_endpoint, pki) as s3:
        config = make_config(storage={"s3_endpoint_url": f"https://127.0.0.1:{s3.port}", "s3_ca_file": str(pki.ca),
                                      "connect_attempts": 2})
        async with open_model_store(config.storage) as store:
            info = await store.put_model("tictactoe", 1, b"a model over TLS", step=1)
            got, data = await store.get_model("tictactoe", 1, max_bytes=1 << 20)
        assert data == b"a model over TLS" and got == info
        assert s3.connections >= 1


@pytest.mark.parametrize("endpoint", ["amqps", "amqps-system-store", "management", "postgres", "s3"])
async def test_an_untrusted_certificate_is_refused_naming_the_endpoint(
        endpoint, make_config, postgres_url, broker_names, s3_endpoint, pki):
    """The server's certificate is signed by a CA the client does not trust (another CA,
    or, with no CA file, the system's store): the connection stops at the handshake with
    one line naming the endpoint (password masked) and the setting to fix, at once (not
    retried at start-up), and the proxy forwarded nothing to the plain server."""
    other = str(pki.other_ca)
    plain = {"amqps": broker_names["url"], "amqps-system-store": broker_names["url"],
             "management": "http://127.0.0.1:15672", "postgres": postgres_url, "s3": s3_endpoint}[endpoint]
    async with tls_in_front_of(plain, pki, postgres=endpoint == "postgres") as proxy:
        port = proxy.port
        # Many attempts: only an error that is not retried ends this quickly.
        broker = {"url": f"amqps://guest:guest@127.0.0.1:{port}/", "connect_attempts": 30}
        storage = {"connect_attempts": 30}
        if endpoint == "amqps":
            broker["ca_file"] = other
        if endpoint == "management":
            broker = {"management_url": f"https://127.0.0.1:{port}", "ca_file": other}
        if endpoint == "postgres":
            storage["postgres_url"] = postgres_tls_url(postgres_url, port, other)
        if endpoint == "s3":
            storage.update(s3_endpoint_url=f"https://127.0.0.1:{port}", s3_ca_file=other)
        config = make_config(broker=broker, storage=storage)

        with pytest.raises(DependencyError) as err:
            async with asyncio.timeout(TIMEOUT_S):
                if endpoint.startswith("amqps"):
                    async with open_bus(config.broker, name="untrusted"):
                        pass
                elif endpoint == "management":
                    await queue_depths(config.broker)
                elif endpoint == "postgres":
                    async with open_replay(config.storage, GAME):
                        pass
                else:
                    async with open_model_store(config.storage):
                        pass
        text = str(err.value)
        where, setting = {
            "amqps": (f"RabbitMQ at amqps://guest:***@127.0.0.1:{port}/", "broker.ca_file"),
            "amqps-system-store": (f"RabbitMQ at amqps://guest:***@127.0.0.1:{port}/", "broker.ca_file"),
            "management": (f"RabbitMQ management API at https://127.0.0.1:{port}", "broker.ca_file"),
            "postgres": (f"PostgreSQL at postgresql://postgres@127.0.0.1:{port}/", "sslrootcert in storage.postgres_url"),
            "s3": (f"S3 endpoint https://127.0.0.1:{port}", "storage.s3_ca_file"),
        }[endpoint]
        assert where in text and "TLS certificate not trusted" in text and setting in text, text
        assert "guest:guest" not in text
        if endpoint != "management":  # a start-up connection: refused, not retried until unreachable
            assert isinstance(err.value, Refused), text
        assert proxy.connections == 0  # nothing reached the server, in plaintext or otherwise
