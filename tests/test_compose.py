"""compose.yaml, kept honest without a container engine: schema, scaling rules, and its
app services' commands run as local processes against the real local services."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.prometheus import api, dashboard_queries, finite_points, free_port, local_config, running_prometheus
from tests.helpers import delete_logins, get

ROOT = Path(__file__).resolve().parents[1]
# The official Compose schema (compose-spec, Apache-2.0; see tests/data/compose-spec/LICENSE),
# kept in the repo so the check runs on every clone.
SCHEMA = ROOT / "tests" / "data" / "compose-spec" / "compose-spec.json"
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
APPS = ("ingest", "trainer", "actor", "evaluator", "web")
# Every published port listens on this variable's address, loopback unless the user opts out.
BIND = "${BIND_ADDRESS:-127.0.0.1}"


def published(service: dict) -> set[str]:
    """`HOST:CONTAINER` of each port the service publishes (the bind address dropped)."""
    return {str(port).removeprefix(BIND + ":") for port in service.get("ports", [])}


def test_compose_file_matches_the_official_schema():
    jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).validate(COMPOSE)  # the schema is draft-07


def test_the_stack_has_every_service():
    assert set(SERVICES) >= {"postgres", "rabbitmq", "minio", "minio-init", *APPS}
    assert "management" in SERVICES["rabbitmq"]["image"]
    assert {"5672:5672", "15672:15672"} <= published(SERVICES["rabbitmq"])
    assert {"9000:9000", "9001:9001"} <= published(SERVICES["minio"])
    assert any(v.startswith("pgdata:") for v in SERVICES["postgres"]["volumes"])
    for name in ("postgres", "rabbitmq", "minio"):
        assert "healthcheck" in SERVICES[name], name
    assert SERVICES["trainer"]["restart"] == "unless-stopped"


def test_actors_scale():
    actor = SERVICES["actor"]
    assert "container_name" not in actor and "ports" not in actor
    assert "CARTRIDGE_ACTOR_ACTOR_ID" not in actor.get("environment", {})  # ids default to hostname-pid


def test_app_services_wait_for_healthy_dependencies():
    for name in APPS:
        depends = SERVICES[name]["depends_on"]
        assert isinstance(depends, dict), name
        for dep, rule in depends.items():
            expected = "service_completed_successfully" if dep in ("minio-init", "provision") else "service_healthy"
            assert rule["condition"] == expected, (name, dep)
    assert SERVICES["trainer"]["depends_on"].keys() >= {"postgres", "rabbitmq", "minio-init", "provision"}
    for name in APPS:  # every app logs in as itself, after the admin made the logins
        assert "provision" in SERVICES[name]["depends_on"], name


def test_each_app_has_its_own_login_and_only_the_servers_it_uses():
    uses = {"actor": {"BROKER", "S3"}, "ingest": {"BROKER", "POSTGRES"}, "trainer": {"BROKER", "POSTGRES", "S3"},
            "evaluator": {"BROKER", "POSTGRES", "S3"}, "web": {"BROKER", "POSTGRES", "S3"},
            "operator": {"BROKER", "S3"}}
    for name, servers in uses.items():
        env = SERVICES[name]["environment"]
        password = f"${{{name.upper()}_PASSWORD:?copy .env.example to .env}}"
        logins = {"BROKER": "CARTRIDGE_BROKER_URL", "POSTGRES": "CARTRIDGE_STORAGE_POSTGRES_URL",
                  "S3": "CARTRIDGE_STORAGE_S3_SECRET_KEY"}
        assert {server for server, key in logins.items() if key in env} == servers, name
        for server in servers:
            assert password in env[logins[server]], (name, server)
        for key in ("CARTRIDGE_BROKER_URL", "CARTRIDGE_STORAGE_POSTGRES_URL"):
            assert key not in env or f"://cartridge_{name}:" in env[key], (name, key)
        assert env.get("CARTRIDGE_STORAGE_S3_ACCESS_KEY", f"cartridge_{name}") == f"cartridge_{name}"
        assert env["CARTRIDGE_BROKER_DECLARE"] == "false", name  # the topology is the admin's
    text = (ROOT / "compose.yaml").read_text()
    for admin in ("RABBITMQ_USER", "POSTGRES_USER", "MINIO_ROOT_USER"):  # only the one-shots log in as admin
        users = {name for name, spec in SERVICES.items() if admin in json.dumps(spec)}
        assert users <= {"provision", "minio-init", "postgres", "rabbitmq", "minio"}, (admin, users)
    # minio-init gives every S3 user its policy file.
    script = " ".join(SERVICES["minio-init"]["command"])
    assert "./deploy/minio:/policies:ro" in SERVICES["minio-init"]["volumes"]
    for name in ("actor", "trainer", "evaluator", "operator", "web"):
        assert (ROOT / "deploy" / "minio" / f"{name}.json").exists() and f"{name} \"$${{{name.upper()}_PASSWORD}}\"" in script
    shared = text.split("x-app:")[1].split("services:")[0]
    assert not re.search(r"PASSWORD|_USER|ACCESS_KEY|SECRET_KEY|BROKER_URL|POSTGRES_URL", shared)  # no login shared by all


@pytest.mark.parametrize("file", ["compose.yaml", "compose.actors.yaml"])
def test_published_ports_listen_on_loopback_unless_opened(file):
    """Every published port is `${BIND_ADDRESS:-127.0.0.1}:HOST:CONTAINER`: on 127.0.0.1
    unless .env sets BIND_ADDRESS; nothing reaches the host's network another way."""
    services = yaml.safe_load((ROOT / file).read_text())["services"]
    ports = [(name, port) for name, spec in services.items() for port in spec.get("ports", [])]
    if file == "compose.yaml":
        assert len(ports) >= 9  # PostgreSQL, RabbitMQ (3), MinIO (2), Prometheus, Grafana, the web page
    for name, port in ports:
        assert isinstance(port, str) and re.fullmatch(re.escape(BIND) + r":\d+:\d+(/tcp)?", port), (file, name, port)
        assert interpolate(port, {}).startswith("127.0.0.1:"), (file, name, port)
        assert interpolate(port, {"BIND_ADDRESS": "0.0.0.0"}).startswith("0.0.0.0:"), (file, name, port)
    for name, spec in services.items():  # host networking would publish every port on every interface
        assert spec.get("network_mode") != "host", (file, name)
    env_example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                       if line and not line.startswith("#"))
    assert env_example["BIND_ADDRESS"] == "127.0.0.1"  # the documented default, opened by editing it


def test_no_secret_in_compose_or_image():
    text = (ROOT / "compose.yaml").read_text()
    logins = ("ACTOR_PASSWORD", "INGEST_PASSWORD", "TRAINER_PASSWORD", "EVALUATOR_PASSWORD", "OPERATOR_PASSWORD",
              "WEB_PASSWORD")
    for var in ("POSTGRES_PASSWORD", "RABBITMQ_PASSWORD", "MINIO_ROOT_PASSWORD", "GRAFANA_PASSWORD", *logins):
        # Every use of a password is a required variable, with no default value.
        uses = re.findall(r"(?<!\$)\$\{" + var + r"([^}]*)\}", text)  # `$${..}`: the container's shell
        assert uses and all(u.startswith(":?") for u in uses), var
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "PASSWORD" not in dockerfile and "SECRET" not in dockerfile
    assert re.search(r"^USER (?!root)", dockerfile, re.M)
    assert "anonymous set none" in " ".join(SERVICES["minio-init"]["command"])
    env_example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                       if line and not line.startswith("#"))
    assert {"POSTGRES_PASSWORD", "RABBITMQ_PASSWORD", "MINIO_ROOT_PASSWORD", "GRAFANA_PASSWORD", *logins} <= env_example.keys()


def test_monitoring_services_are_pinned_and_provisioned():
    for name in ("prometheus", "grafana"):
        image = SERVICES[name]["image"]
        tag = image.rpartition(":")[2]
        assert ":" in image and tag != "latest" and re.search(r"\d+\.\d+\.\d+", tag), image
    assert "15692:15692" in published(SERVICES["rabbitmq"])
    plugins = next(v for v in SERVICES["rabbitmq"]["volumes"] if v.endswith("/etc/rabbitmq/enabled_plugins:ro"))
    assert "rabbitmq_prometheus" in (ROOT / plugins.split(":")[0]).read_text()
    mounts = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["grafana"]["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    prometheus = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["prometheus"]["volumes"]}
    assert prometheus["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    for name in APPS:  # alive = the endpoint's /healthz on the port the service listens on
        spec = SERVICES[name]
        assert "/healthz" in " ".join(spec["healthcheck"]["test"]), name
        assert spec["environment"]["CARTRIDGE_METRICS_PORT"] == "9464"
        assert spec["environment"]["CARTRIDGE_METRICS_HOST"] == "0.0.0.0"


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?error}` and `$$`."""
    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in env and env[name] != "":
            return env[name]
        if op == ":-":
            return arg
        raise KeyError(f"{name} is required: {arg}")
    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, value).replace("$$", "$")


def local_process(service: str, env: dict[str, str], hosts: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The service's command and environment as compose would give them, with the
    compose hostnames mapped to the local servers."""
    spec = SERVICES[service]
    environment = {}
    for key, value in spec["environment"].items():
        value = interpolate(str(value), env)
        for host, local in hosts.items():
            value = value.replace(host, local)
        environment[key] = value
    return list(spec["command"]), environment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def moto_server(tmp_path):
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait()


async def publish_garbage(broker_names: dict[str, str]) -> None:
    import aio_pika

    connection = await aio_pika.connect(broker_names["url"])
    async with connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(aio_pika.Message(b"not a transition batch", message_id="garbage"),
                                               routing_key=broker_names["transitions_queue"])


def test_compose_commands_run_the_pipeline(moto_server, test_id, broker_names, tmp_path):
    """ingest, trainer, three actors, the evaluator and the web page, started exactly as
    compose.yaml writes them, until a model is published, every actor serves it, it is
    rated, and the web page shows the rating and every service's heartbeat; meanwhile
    Prometheus, configured as compose configures it, scrapes them all and RabbitMQ, and
    then every query of the dashboard has data. Each container's health check passes and
    each pipeline service is ready."""
    dotenv = {  # what a user's .env would hold, pointed at this machine's servers
        "POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": "unused-with-trust-auth",
        "POSTGRES_DB": f"cartridge_compose_{test_id}",
        "RABBITMQ_USER": "guest", "RABBITMQ_PASSWORD": "guest",
        "MINIO_ROOT_USER": "testing", "MINIO_ROOT_PASSWORD": "testing-secret",
        "MINIO_BUCKET": f"cartridge-compose-{test_id}",
        **{f"{s.upper()}_PASSWORD": f"{s}-{test_id}" for s in ("actor", "ingest", "trainer", "evaluator", "operator", "web")},
    }
    # The logins are this test's own (`provision --prefix`): cartridge_<service> -> t<id>_<service>.
    prefix = f"t{test_id}_"
    hosts = {"@postgres:5432": "@127.0.0.1:5432", "@rabbitmq:5672": "@127.0.0.1:5672",
             "http://minio:9000": moto_server, "http://rabbitmq:15672": "http://127.0.0.1:15672",
             "://cartridge_": f"://{prefix}"}
    web_port = free_port()
    # The test's own knobs: its own queues, and a small fast game, so it finishes quickly.
    harness = {
        "CARTRIDGE_BROKER_TRANSITIONS_QUEUE": broker_names["transitions_queue"],
        "CARTRIDGE_BROKER_DEAD_LETTER_EXCHANGE": broker_names["dead_letter_exchange"],
        "CARTRIDGE_BROKER_DEAD_LETTER_QUEUE": broker_names["dead_letter_queue"],
        "CARTRIDGE_BROKER_MODELS_EXCHANGE": broker_names["models_exchange"],
        "CARTRIDGE_BROKER_EVALUATOR_QUEUE": broker_names["evaluator_queue"],
        "CARTRIDGE_BROKER_HEARTBEATS": broker_names["heartbeats"], "CARTRIDGE_STATUS_HEARTBEAT_S": "1",
        "CARTRIDGE_WEB_HOST": "127.0.0.1", "CARTRIDGE_WEB_PORT": str(web_port),
        "CARTRIDGE_EVAL_SIMULATIONS": "4", "CARTRIDGE_EVAL_POSITIONS": "8", "CARTRIDGE_EVAL_GAMES": "4",
        "CARTRIDGE_EVAL_GAME_SIMULATIONS": "4",
        "CARTRIDGE_COMMON_ENV_ID": "tictactoe", "CARTRIDGE_MCTS_NUM_SIMULATIONS": "16",
        "CARTRIDGE_ACTOR_PARALLEL_GAMES": "16", "CARTRIDGE_TRAINING_MIN_TRANSITIONS": "200",
        "CARTRIDGE_TRAINING_STEPS_PER_ITERATION": "20", "CARTRIDGE_TRAINING_BATCH_SIZE": "64",
        "CARTRIDGE_NETWORK_BLOCKS": "1", "CARTRIDGE_NETWORK_CHANNELS": "16",
    }
    base = {k: v for k, v in os.environ.items() if not k.startswith("CARTRIDGE_")}
    base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
    base["PYTHONPATH"] = str(ROOT)  # this checkout's code, whichever one `cartridge` was installed from
    assert shutil.which("cartridge", path=base["PATH"])

    procs, logs, envs, ports = {}, {}, {}, {}
    stack = contextlib.ExitStack()
    started = time.time()
    try:
        # The admin's one-shot first, as compose runs it: topology, RabbitMQ users, database
        # roles; every app then logs in as itself with only its rights.
        command, environment = local_process("provision", dotenv, hosts)
        provision = subprocess.run(command + ["--prefix", prefix], env={**base, **environment, **harness}, cwd=tmp_path,
                                   capture_output=True, text=True, timeout=300)
        assert provision.returncode == 0, provision.stderr[-3000:]
        for name, service in [("ingest", "ingest"), ("trainer", "trainer"),
                              ("actor-1", "actor"), ("actor-2", "actor"), ("actor-3", "actor"),
                              ("evaluator", "evaluator"), ("web", "web")]:
            command, environment = local_process(service, dotenv, hosts)
            logs[name] = tmp_path / f"{name}.log"
            # Containers all listen on one port; local processes each need their own.
            ports[name] = free_port()
            metrics = {"CARTRIDGE_METRICS_PORT": str(ports[name]), "CARTRIDGE_METRICS_HOST": "127.0.0.1"}
            envs[name] = {**base, **environment, **harness, **metrics}
            procs[name] = subprocess.Popen(
                command, env=envs[name], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=open(logs[name], "w"))
        targets = {}
        for name in procs:
            targets.setdefault(name.partition("-")[0], []).append(f"127.0.0.1:{ports[name]}")
        prometheus = stack.enter_context(running_prometheus(local_config(targets, "127.0.0.1:15692"), tmp_path))
        deadline = time.monotonic() + 240
        actors = [n for n in procs if n.startswith("actor")]
        while time.monotonic() < deadline:
            if (all("Model updated to version 1" in logs[a].read_text() for a in actors)
                    and "model 1: rating" in logs["evaluator"].read_text()):
                break
            crashed = [n for n, p in procs.items() if p.poll() is not None]
            assert not crashed, {n: logs[n].read_text()[-2000:] for n in crashed}
            time.sleep(0.5)
        else:
            pytest.fail("no model reached all actors and the evaluator: " + logs["trainer"].read_text()[-2000:]
                        + logs["evaluator"].read_text()[-2000:])
        assert "published model 1" in logs["trainer"].read_text()
        # The web page shows the rating and, through their heartbeats, every service.
        deadline = time.monotonic() + 60
        while True:
            overview = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{web_port}/api/overview", timeout=10).read())
            services = {i["service"] for i in overview["live"]["instances"]}
            if services >= {"ingest", "trainer", "actor", "evaluator"} and overview["ratings"]:
                break
            assert time.monotonic() < deadline, overview
            time.sleep(0.5)
        assert overview["ratings"][0]["version"] == 1 and overview["errors"] == []
        ids = {re.search(r"actor (\S+) playing", logs[a].read_text())[1] for a in actors}
        assert len(ids) == 3  # three distinct actor ids from hostname-pid

        # One unusable message: dead-lettered, counted by reason, seen in the dead-letter queue.
        asyncio.run(publish_garbage(broker_names))
        ingest_metrics = f"http://127.0.0.1:{ports['ingest']}/metrics"
        deadline = time.monotonic() + 30
        while 'cartridge_ingest_dead_lettered_messages_total{reason="undecodable"} 1.0' not in get(ingest_metrics)[1]:
            assert time.monotonic() < deadline, get(ingest_metrics)[1]
            time.sleep(0.5)

        for name in procs:
            healthcheck = SERVICES[name.partition("-")[0]]["healthcheck"]["test"]
            assert healthcheck[0] == "CMD"
            check = subprocess.run(healthcheck[1:], env=envs[name], capture_output=True, text=True, timeout=30)
            assert check.returncode == 0, (name, check.stderr)
            status, body = get(f"http://127.0.0.1:{ports[name]}/readyz")
            assert status == 200 and json.loads(body)["ready"], (name, body)

        # The dashboard: every query has data once the evaluator's rating is scraped.
        deadline = time.monotonic() + 30
        while not finite_points(prometheus, "cartridge_evaluator_rating", started, time.time()):
            assert time.monotonic() < deadline, "Prometheus never scraped a rating"
            time.sleep(0.5)
        time.sleep(2)  # two more scrapes: rates need two samples after the last event
        scraped = api(prometheus, "targets")["activeTargets"]
        assert len(scraped) == len(procs) + 2 and all(t["health"] == "up" for t in scraped), scraped
        variables = {"queue": broker_names["transitions_queue"], "dead_letter_queue": broker_names["dead_letter_queue"]}
        empty = [(title, expr) for title, expr in dashboard_queries(variables)
                 if not finite_points(prometheus, expr, started, time.time())]
        assert not empty, f"dashboard queries without data: {empty}"
    finally:
        stack.close()
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        try:
            codes = {n: p.wait(timeout=60) for n, p in procs.items()}
        finally:
            subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-c",
                            f'DROP DATABASE IF EXISTS "{dotenv["POSTGRES_DB"]}" WITH (FORCE)'],
                           capture_output=True)
            asyncio.run(delete_logins(prefix))  # after the database: the roles own its tables
    assert all(code == 0 for code in codes.values()), codes  # SIGTERM: a clean exit
