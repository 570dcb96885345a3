"""`cartridge status` against the real RabbitMQ: a service started the way compose starts
it is seen through its heartbeats (exit 0); once stopped it is named as down (exit 1);
an unreachable broker is a non-zero exit naming it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aio_pika
import pytest

from shared.config import load_config
from shared.heartbeat import HeartbeatSender, read_recent
from shared.liveness import LiveView
from shared.status import ActorStatus, IngestStatus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def heartbeats(test_id):
    name = f"test.{test_id}.heartbeats"
    yield name
    connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(name)
        await channel.exchange_delete(name)


def actor_status(name: str, state: str = "running", positions: int = 0) -> ActorStatus:
    return ActorStatus(name=name, state=state, games=positions // 9, positions=positions, simulations=0,
                       model_version=2, published_positions=0, unconfirmed=0, publish_retries=0,
                       reload_latency_ms=None)


def test_silence_and_stop_are_down_and_rates_come_from_two_beats():
    view = LiveView(missed_beats=3)
    view.observe(actor_status("a", positions=100), 1000.0, interval_s=5)
    view.observe(actor_status("a", positions=300), 1010.0, interval_s=5)
    view.observe(actor_status("b", state="stopped"), 1012.0, interval_s=5)
    (a,), (b,) = view.of(ActorStatus)[:1], view.of(ActorStatus)[1:]
    assert a.rate("positions") == 20.0
    assert a.problem(1020.0, 3) is None and "no heartbeat for 16 s" in a.problem(1026.0, 3)
    assert b.problem(1013.0, 3).startswith("stopped")
    assert [i.name for i, _ in view.down(1026.0)] == ["a", "b"]
    view.observe(actor_status("a", positions=50), 1001.0, interval_s=5)  # late, older beat: ignored
    assert view.instances[("actor", "a")].last.positions == 300


async def test_a_sent_heartbeat_is_read_back(heartbeats, test_id):
    config = load_config(environ={}, overrides={"broker": {"heartbeats": heartbeats},
                                                "status": {"heartbeat_s": 0.2}})
    status = IngestStatus(name=f"ingest-{test_id}", state="running", messages=3, rows=27, duplicates=0,
                          dead_lettered=0, flushes=1, write_failures=0, settled=3, actor_models={"x": 4})
    async with HeartbeatSender(config, lambda: status) as sender:
        while sender.sent < 2:
            await __import__("asyncio").sleep(0.05)
    beats = await read_recent(config.broker, 60)
    mine = [b for b in beats if b.status.name == status.name]
    assert len(mine) >= 3  # two while running, one as it stopped
    assert mine[0].status == status and mine[0].interval_s == 0.2


def status_command(env: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cartridge.cli", "status", *extra], env=env,
                          capture_output=True, text=True, timeout=60)


def test_status_sees_a_running_service_and_names_it_once_stopped(tmp_path, heartbeats, broker_names, postgres_url):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CARTRIDGE_")}, "PYTHONPATH": str(ROOT),
           "CARTRIDGE_BROKER_HEARTBEATS": heartbeats, "CARTRIDGE_STATUS_HEARTBEAT_S": "0.5",
           "CARTRIDGE_STATUS_MISSED_BEATS": "3",
           "CARTRIDGE_BROKER_TRANSITIONS_QUEUE": broker_names["transitions_queue"],
           "CARTRIDGE_BROKER_DEAD_LETTER_EXCHANGE": broker_names["dead_letter_exchange"],
           "CARTRIDGE_BROKER_DEAD_LETTER_QUEUE": broker_names["dead_letter_queue"],
           "CARTRIDGE_BROKER_MODELS_EXCHANGE": broker_names["models_exchange"],
           "CARTRIDGE_STORAGE_POSTGRES_URL": postgres_url}
    log = tmp_path / "ingest.log"
    ingest = subprocess.Popen([sys.executable, "-m", "cartridge.cli", "ingest"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    try:
        deadline = time.monotonic() + 60
        while True:
            up = status_command(env)
            # A heartbeat of state "starting" counts as up too: wait for it to run.
            if up.returncode == 0 and any(ln.startswith("ingest") and "running" in ln for ln in up.stdout.splitlines()):
                break
            assert ingest.poll() is None, log.read_text()
            assert time.monotonic() < deadline, up.stdout + up.stderr
            time.sleep(0.5)
        line = next(ln for ln in up.stdout.splitlines() if ln.startswith("ingest"))
        assert "running" in line and "positions stored" in line
        assert broker_names["transitions_queue"] in up.stdout  # queue depths from the management API
        assert "OK: every service heard from is up" in up.stdout
    finally:
        ingest.send_signal(signal.SIGTERM)
        assert ingest.wait(timeout=60) == 0
    down = status_command(env)
    assert down.returncode == 1, down.stdout
    assert any(ln.startswith("DOWN: ingest") and "stopped" in ln for ln in down.stdout.splitlines()), down.stdout
    # One that died without a word: silent for more than missed_beats heartbeats.
    killed = subprocess.Popen([sys.executable, "-m", "cartridge.cli", "ingest"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while status_command(env, "--json").stdout.count('"state": "running"') < 1:
            assert time.monotonic() < deadline
            time.sleep(0.5)
    finally:
        killed.kill()
        killed.wait()
    time.sleep(2.0)  # > 3 beats of 0.5 s
    dead = status_command(env)
    assert dead.returncode == 1 and "no heartbeat for" in dead.stdout, dead.stdout


def test_status_exits_nonzero_when_rabbitmq_is_unreachable():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CARTRIDGE_BROKER_URL": "amqp://guest:guest@127.0.0.1:1/",
           "CARTRIDGE_BROKER_MANAGEMENT_URL": "http://127.0.0.1:1"}
    result = status_command(env)
    assert result.returncode == 1
    assert "RabbitMQ at amqp://guest:***@127.0.0.1:1/ is unreachable" in result.stdout
    assert "management API at http://127.0.0.1:1 is unreachable" in result.stdout
