"""Fixtures that give every test its own slice of the real services.

- PostgreSQL: a fresh database per test (dropped afterwards).
- RabbitMQ: queue and exchange names unique to the test (deleted afterwards).
- S3: moto's server on a loopback port for the whole session, a fresh bucket per test;
  `CARTRIDGE_TEST_S3_URL` points the tests at a real MinIO instead.
Base URLs can be moved with `CARTRIDGE_TEST_POSTGRES_URL` and `CARTRIDGE_TEST_AMQP_URL`.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any, Callable

import asyncpg
import pytest
import uvloop

from shared.config import Config, load_config

POSTGRES_BASE = os.environ.get("CARTRIDGE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432")
AMQP_URL = os.environ.get("CARTRIDGE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def pytest_asyncio_loop_factories(config, item):
    # Services run on uvloop; so do their tests.
    return {"uvloop": uvloop.new_event_loop}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    url = os.environ.get("CARTRIDGE_TEST_S3_URL")
    if url:
        yield url
        return
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def test_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def postgres_url(test_id: str) -> str:
    name = f"cartridge_test_{test_id}"
    admin = await asyncpg.connect(f"{POSTGRES_BASE}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield f"{POSTGRES_BASE}/{name}"
    admin = await asyncpg.connect(f"{POSTGRES_BASE}/postgres")
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def broker_names(test_id: str) -> dict[str, str]:
    names = {
        "url": AMQP_URL,
        "transitions_queue": f"test.{test_id}.transitions",
        "dead_letter_exchange": f"test.{test_id}.dead",
        "dead_letter_queue": f"test.{test_id}.transitions.dead",
        "models_exchange": f"test.{test_id}.models",
        "evaluator_queue": f"test.{test_id}.evaluator",
        "heartbeats": f"test.{test_id}.heartbeats",
    }
    yield names
    import aio_pika

    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for q in (names["transitions_queue"], names["dead_letter_queue"], names["evaluator_queue"], names["heartbeats"]):
            await channel.queue_delete(q)
        for x in (names["dead_letter_exchange"], names["models_exchange"], names["heartbeats"]):
            await channel.exchange_delete(x)


@pytest.fixture
def make_config(
    postgres_url: str, broker_names: dict[str, str], s3_endpoint: str, test_id: str, tmp_path
) -> Callable[..., Config]:
    """`make_config(mcts={"num_simulations": 8}, ...)`: a Config wired to this test's
    database, queues and bucket, small enough to run fast, with overrides on top."""

    def build(**sections: dict[str, Any]) -> Config:
        base: dict[str, dict[str, Any]] = {
            "common": {"env_id": "tictactoe", "log_level": "DEBUG"},
            "network": {"blocks": 1, "channels": 16},
            "mcts": {"num_simulations": 16},
            "actor": {"parallel_games": 8},
            "training": {"steps_per_iteration": 5, "batch_size": 32, "min_transitions": 50,
                         "window_size": 10_000, "device": "cpu"},
            "storage": {
                "postgres_url": postgres_url,
                "s3_endpoint_url": s3_endpoint,
                "s3_bucket": f"cartridge-test-{test_id}",
                "s3_access_key": "testing",
                "s3_secret_key": "testing",
                "sqlite_path": str(tmp_path / "replay.sqlite"),
                "local_model_dir": str(tmp_path / "models"),
            },
            "broker": dict(broker_names),
            "ingest": {"flush_ms": 50},
        }
        for section, values in sections.items():
            base.setdefault(section, {}).update(values)
        return load_config(environ={}, overrides=base)

    return build
