"""The web page's server on the distributed back ends (PostgreSQL, S3, RabbitMQ): the
overview holds the database's and the store's rows and what heartbeats say; playing
checks every move and answers bad input with a 400 naming what is wrong."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

import aio_pika
import pytest
from aiohttp.test_utils import TestClient, TestServer

from cartridge.ratings import rating_rows
from cartridge.web import WebReadiness
from cartridge.web.app import build_app
from cartridge.web.overview import Overview, follow_heartbeats
from cartridge.web.play import ModelPlayer
from shared.bus.management import queue_depths
from shared.evaluations import open_evaluations
from shared.games import get_game
from shared.heartbeat import HeartbeatSender
from shared.liveness import LiveView
from shared.metrics.health import Health
from shared.model_store import open_model_store
from shared.status import TrainerStatus
from web_data import EVAL, short_run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def web(make_config, test_id):
    config = make_config(common={"env_id": "connect4"}, eval=dict(EVAL), network={"blocks": 1, "channels": 8},
                         broker={"heartbeats": f"test.{test_id}.heartbeats"}, status={"heartbeat_s": 0.2})
    await short_run(config)
    async with open_model_store(config.storage) as store, open_evaluations(config.storage) as results:
        live = LiveView()
        overview = Overview(config, store, results, live, lambda: queue_depths(config.broker))
        follower = asyncio.create_task(follow_heartbeats(config, live, overview))
        async with TestClient(TestServer(build_app(overview, ModelPlayer(config, store)))) as client:
            yield config, client
        follower.cancel()
    connection = await aio_pika.connect(config.broker.url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(config.broker.heartbeats)
        await channel.exchange_delete(config.broker.heartbeats)


async def test_the_overview_holds_the_rows_of_the_database_the_store_and_the_heartbeats(web):
    config, client = web
    trainer = TrainerStatus(name="trainer-under-test", state="running", step=300, version=3, replay_size=9000,
                            window_size=9000, loss=0.75, policy_loss=0.5, value_loss=0.25, samples=6400,
                            positions_loaded=3200)
    async with HeartbeatSender(config, lambda: trainer) as sender:
        async with asyncio.timeout(30):
            while True:
                overview = await (await client.get("/api/overview")).json()
                if any(i["name"] == trainer.name for i in overview["live"]["instances"]) and sender.sent:
                    break
                await asyncio.sleep(0.1)
    assert overview["ratings"] == await rating_rows(config)
    assert [(m["version"], m["step"], m["loss"]) for m in overview["models"]] == [(1, 100, 3.0), (2, 200, 1.5), (3, 300, 1.0)]
    assert overview["newest"]["version"] == 3 and overview["served"] == 3
    (seen,) = [i for i in overview["live"]["instances"] if i["name"] == trainer.name]
    assert seen["service"] == "trainer" and seen["status"]["step"] == 300 and seen["samples_per_position"] == 2.0
    assert overview["live"]["loss"][0][:2] == [300, 0.75]
    assert overview["queues"] is not None and overview["errors"] == []  # the management API answered
    assert overview["board"] == {"rows": 6, "cols": 7, "gravity": True}
    # Play starts at the evaluator's search (4 here), not self-play's (16).
    assert overview["default_simulations"] == config.eval.simulations == 4


async def test_a_whole_game_through_the_api_every_model_move_legal(web):
    _, client = web
    game, moves, replies = get_game("connect4"), "", 0
    while True:
        reply = await client.post("/api/play", json={"version": 1, "sims": 8, "moves": moves})
        answer = await reply.json()
        assert reply.status == 200, answer
        board, done, _ = game.position(answer["moves"])  # raises if any move in it is illegal
        if "model_move" in answer:
            replies += 1
            before, _, _ = game.position(moves)
            assert game.legal_mask(before[None])[0, answer["model_move"] - 1]
            assert answer["moves"] == moves + str(answer["model_move"])
            assert len(answer["probabilities"]) == 7 and abs(sum(answer["probabilities"]) - 1) < 1e-3
        if answer["done"]:
            assert done and answer["result"] in ("you win", "model wins", "draw")
            break
        assert answer["legal"] == [c + 1 for c in range(7) if game.legal_mask(board[None])[0, c]]
        moves = answer["moves"] + str(answer["legal"][-1])  # the rightmost open column
    assert replies >= 4


BAD = [
    ({"sims": 8, "moves": ""}, 400, ["version must be", "None"]),
    ({"version": "2", "moves": ""}, 400, ["version must be", "'2'"]),
    ({"version": 99, "moves": ""}, 400, ["unknown version", "99", "newest is 3"]),
    ({"version": 1, "sims": -1}, 400, ["sims must be", "-1"]),
    ({"version": 1, "sims": 100_000}, 400, ["sims must be", "web.max_simulations"]),
    ({"version": 1, "moves": "4444444"}, 400, ["illegal moves", "move 7", "4 is full"]),
    ({"version": 1, "moves": "48"}, 400, ["illegal moves", "'8' is not a move 1..7"]),
    ({"version": 1, "moves": 44}, 400, ["moves must be a move string"]),
    ({"version": 1, "colour": "red"}, 400, ["unknown field", "colour"]),
    ([1, 2], 400, ["JSON object"]),
    ({"version": 1, "moves": "1212121"}, 200, ["you win"]),  # the game is already over: no model move
]


async def test_bad_input_is_a_400_naming_what_is_wrong(web):
    _, client = web
    for body, status, words in BAD:
        reply = await client.post("/api/play", json=body)
        text = await reply.text()
        assert reply.status == status, (body, text)
        for word in words:
            assert word in text, (body, text)


async def test_a_body_that_is_not_json_is_a_400(web):
    _, client = web
    reply = await client.post("/api/play", data=b"version=1")
    assert reply.status == 400 and "must be JSON" in (await reply.json())["error"]


def test_cartridge_web_names_a_port_that_is_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "cartridge.cli", "web", "--port", str(port), "--set", "storage.replay_backend=sqlite",
             "--set", "storage.model_store=local", "--set", "broker.url=amqp://guest:guest@127.0.0.1:1/"],
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is taken" in result.stderr and "web.port" in result.stderr


async def test_the_web_page_is_ready_while_serving_with_its_database_and_store_answering(make_config):
    config = make_config()
    async with open_model_store(config.storage) as store, open_evaluations(config.storage) as results:
        readiness, health = WebReadiness(store, results), Health()
        with health.tracking(readiness):
            assert not health.ready()[0]  # starting
            readiness.lifecycle.started(asyncio.Event())
            await store.list_versions("connect4")  # the store answered once
            ready, body = health.ready()
            assert ready, body
            assert body["services"] == [{"service": "web", "name": readiness.name, "state": "running", "down": []}]
            store.link.failed("test: S3 gone")
            ready, body = health.ready()
            assert not ready and body["services"][0]["down"] == [store.link.name]
