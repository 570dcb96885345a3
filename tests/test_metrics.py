"""The metrics endpoint, what `/healthz` and `/readyz` answer, how status snapshots become
metrics, and prometheus_client's multiprocess collection as `cartridge up` uses it.
(Live runs: tests/test_compose.py scrapes every service's command with Prometheus,
tests/test_up.py the one endpoint of `cartridge up`.)"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, multiprocess

from shared.config import ConfigError, load_config
from shared.metrics.endpoint import Endpoint, PortInUse
from shared.metrics.export import StatusExport
from shared.metrics.families import DEAD_LETTER_REASONS, Families
from shared.metrics.health import STALL_S, Health
from shared.retry import Link
from shared.status import ActorStatus, EvaluatorStatus, IngestStatus, TrainerStatus
from tests.helpers import get

ROOT = Path(__file__).resolve().parents[1]


def actor_status(**values) -> ActorStatus:
    base = dict(name="a1", state="running", games=0, positions=0, simulations=0, model_version=0,
                published_positions=0, unconfirmed=0, publish_retries=0, reload_latency_ms=None, evaluations=0)
    return ActorStatus(**{**base, **values})


class FakeBackEnd:
    def __init__(self, name: str):
        self.link = Link(name)


class FakeService:
    def __init__(self, state: str = "running"):
        self.state = state
        self.bus = FakeBackEnd("RabbitMQ at amqp://guest:***@127.0.0.1:5672/")
        self.replay = FakeBackEnd("PostgreSQL at postgresql://postgres@127.0.0.1:5432/x")

    def status(self):
        return actor_status(state=self.state)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def endpoint():
    clock = Clock()
    health = Health(clock=clock)
    registry = CollectorRegistry()
    families = Families(registry)
    server = Endpoint("127.0.0.1", 0, lambda: registry, health).start()
    server.clock, server.health, server.families = clock, health, families
    yield server
    server.close()


def base(server: Endpoint) -> str:
    return f"http://127.0.0.1:{server.port}"


def test_healthz_is_alive_while_the_event_loop_turns(endpoint):
    status, body = get(base(endpoint) + "/healthz")
    assert status == 200 and json.loads(body)["alive"] is True
    endpoint.clock.now += STALL_S + 1  # no heartbeat for longer than STALL_S: a stuck loop
    status, body = get(base(endpoint) + "/healthz")
    assert status == 503 and json.loads(body)["alive"] is False
    endpoint.health.beat()
    assert get(base(endpoint) + "/healthz")[0] == 200


def test_readyz_needs_running_services_whose_dependencies_answer(endpoint):
    url = base(endpoint) + "/readyz"
    status, body = get(url)
    assert status == 503 and json.loads(body) == {"ready": False, "services": []}  # nothing runs yet

    service = FakeService(state="starting")
    with endpoint.health.tracking(service):
        assert get(url)[0] == 503  # still connecting
        service.state = "running"
        status, body = get(url)
        assert status == 200, body
        assert json.loads(body)["services"] == [{"service": "actor", "name": "a1", "state": "running", "down": []}]

        service.replay.link.ok()
        service.replay.link.failed("connection refused")  # lost PostgreSQL
        status, body = get(url)
        assert status == 503
        assert json.loads(body)["services"][0]["down"] == ["PostgreSQL at postgresql://postgres@127.0.0.1:5432/x"]
        service.replay.link.ok()
        assert get(url)[0] == 200

        service.state = "stopping"
        assert get(url)[0] == 503
    assert get(url)[0] == 503  # gone


def test_metrics_and_unknown_paths(endpoint):
    endpoint.families.actor.games.labels(actor="a1").inc(3)
    status, body = get(base(endpoint) + "/metrics")
    assert status == 200 and 'cartridge_actor_games_total{actor="a1"} 3.0' in body
    assert get(base(endpoint) + "/nothing")[0] == 404


def test_a_taken_port_is_a_clear_configuration_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PortInUse, match=rf"metrics.port: cannot listen on 127.0.0.1:{port}") as caught:
            Endpoint("127.0.0.1", port, CollectorRegistry)
        assert isinstance(caught.value, ConfigError)


def test_metrics_are_off_unless_a_port_is_set():
    config = load_config(environ={})
    assert config.metrics.port == 0  # config.toml: no endpoint (compose and `cartridge up` set one)
    assert load_config(environ={"CARTRIDGE_METRICS_PORT": "9464"}).metrics.port == 9464
    with pytest.raises(ConfigError, match="port"):
        load_config(environ={"CARTRIDGE_METRICS_PORT": "70000"})


def test_names_follow_prometheus_conventions():
    families = Families(CollectorRegistry())
    for group, service in ((families.actor, "actor"), (families.ingest, "ingest"), (families.trainer, "trainer"),
                           (families.evaluator, "evaluator")):
        for metric in vars(group).values():
            name = metric._name
            assert name.startswith(f"cartridge_{service}_"), name
            assert not any(unit in name for unit in ("_ms", "millis", "_percent", "_pct")), name  # base units
            if metric._type == "histogram":
                assert name.endswith(("_seconds", "_rows")), name
            assert metric._documentation, name
    names = families.names()
    assert len(names) == len(set(names))


def sample(registry, name, **labels):
    return registry.get_sample_value(name, labels)


def test_status_snapshots_become_metrics():
    registry = CollectorRegistry()
    families = Families(registry)
    actor = StatusExport(families)
    actor.apply(actor_status(games=2, positions=30, simulations=900, evaluations=700, model_version=1))
    actor.apply(actor_status(games=5, positions=70, simulations=2000, evaluations=1500, model_version=3,
                             unconfirmed=4, publish_retries=1, paused=True))
    assert sample(registry, "cartridge_actor_paused", actor="a1") == 1
    assert sample(registry, "cartridge_actor_games_total", actor="a1") == 5  # grown by the differences
    assert sample(registry, "cartridge_actor_positions_total", actor="a1") == 70
    assert sample(registry, "cartridge_actor_network_evaluations_total", actor="a1") == 1500
    assert sample(registry, "cartridge_actor_model_version", actor="a1") == 3
    assert sample(registry, "cartridge_actor_unconfirmed_messages", actor="a1") == 4
    assert sample(registry, "cartridge_actor_reload_latency_seconds_count", actor="a1") == 0  # exists before a reload

    ingest = StatusExport(families)
    ingest.apply(IngestStatus(name="i", state="running", messages=10, rows=100, duplicates=1, dead_lettered=0,
                              flushes=2, write_failures=0, settled=10, actor_models={}, backlog=None))
    assert sample(registry, "cartridge_ingest_stored_rows_total") == 100
    assert math.isnan(sample(registry, "cartridge_ingest_backlog_messages"))  # not asked yet: a gap, not a zero
    for reason in DEAD_LETTER_REASONS:
        assert sample(registry, "cartridge_ingest_dead_lettered_messages_total", reason=reason) == 0

    trainer = StatusExport(families)
    trainer.apply(TrainerStatus(name="t", state="running", step=5000, version=3, replay_size=9000, window_size=8000,
                                loss=None, policy_loss=None, value_loss=None, samples=0, positions_loaded=0))
    assert math.isnan(sample(registry, "cartridge_trainer_loss", part="total"))
    trainer.apply(TrainerStatus(name="t", state="running", step=5100, version=4, replay_size=9500, window_size=8000,
                                loss=2.5, policy_loss=1.75, value_loss=0.75, samples=25600, positions_loaded=6400,
                                steps_this_run=100, published=1, learning_rate=0.001, window_oldest_version=2,
                                window_newest_version=4, waiting_for_positions=True))
    assert sample(registry, "cartridge_trainer_waiting_for_positions") == 1
    assert sample(registry, "cartridge_trainer_step") == 5100  # the step over every run: a gauge
    assert sample(registry, "cartridge_trainer_steps_total") == 100  # this run's steps: a counter
    assert sample(registry, "cartridge_trainer_loss", part="policy") == 1.75
    assert sample(registry, "cartridge_trainer_samples_per_position") == 4.0
    assert sample(registry, "cartridge_trainer_window_oldest_model_version") == 2
    assert sample(registry, "cartridge_trainer_published_versions_total") == 1

    evaluator = StatusExport(families)
    evaluator.apply(EvaluatorStatus(name="e", state="running", evaluated=1, failed=0, skipped=2, version=3,
                                    rating=812.5, rating_error=95.0, optimal_pct={"early": 77.0, "mid": 80.0},
                                    policy_optimal_pct={"early": 45.0, "mid": 65.0, "late": 66.0}, serving=None,
                                    rollbacks=0, cpu_seconds=28.0, games=40, last_cost_cpu_s=28.0))
    assert sample(registry, "cartridge_evaluator_rating") == 812.5
    assert sample(registry, "cartridge_evaluator_versions_total", result="skipped") == 2
    assert sample(registry, "cartridge_evaluator_optimal_move_ratio", stage="early", method="search") == 0.77
    assert math.isnan(sample(registry, "cartridge_evaluator_optimal_move_ratio", stage="late", method="search"))
    assert sample(registry, "cartridge_evaluator_games_total") == 40


WRITER = """
import sys
from shared.metrics.export import StatusExport
from shared.metrics.families import recorder
from shared.status import ActorStatus
name, version = sys.argv[1], int(sys.argv[2])
StatusExport(recorder()).apply(ActorStatus(
    name=name, state="running", games=version * 10, positions=0, simulations=0, model_version=version,
    published_positions=0, unconfirmed=0, publish_retries=0, reload_latency_ms=None))
"""


def test_processes_record_into_one_directory_and_a_dead_one_keeps_only_its_counters(tmp_path):
    """What `cartridge up` relies on: each worker records into PROMETHEUS_MULTIPROC_DIR
    (set before it imports prometheus_client), the parent merges every file, and a worker
    marked dead leaves its counters but not its gauges."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    pids = {}
    for name, version in (("a1", 1), ("a2", 2)):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, name, str(version)], env=env)
        pids[name] = writer.pid
        assert writer.wait(timeout=60) == 0

    def collect() -> CollectorRegistry:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
        return registry

    registry = collect()
    assert sample(registry, "cartridge_actor_model_version", actor="a1") == 1
    assert sample(registry, "cartridge_actor_model_version", actor="a2") == 2
    assert sample(registry, "cartridge_actor_games_total", actor="a2") == 20

    multiprocess.mark_process_dead(pids["a1"], str(tmp_path))
    registry = collect()
    assert sample(registry, "cartridge_actor_model_version", actor="a1") is None  # it plays no model any more
    assert sample(registry, "cartridge_actor_games_total", actor="a1") == 10  # what it played still counts
    assert sample(registry, "cartridge_actor_model_version", actor="a2") == 2
