"""A real Prometheus for the tests (Debian's `prometheus` package, installed by .ci/run):
the repository's configuration with compose's hostnames pointed at local processes, a
fast scrape interval, a temporary storage directory and a free port; and the
dashboard's queries run through its HTTP API."""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "cartridge.json"
SCRAPE_S = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_config(targets: dict[str, list[str]], rabbitmq: str) -> dict:
    """The repository's Prometheus configuration, each DNS-discovered service name
    replaced by its local `host:port` targets (labelled as the relabelling would) and
    RabbitMQ's address by `rabbitmq`."""
    config = yaml.safe_load(CONFIG.read_text())
    config["global"] = {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"}
    for job in config["scrape_configs"]:
        job["scrape_interval"] = f"{SCRAPE_S}s"
        if "dns_sd_configs" in job:
            names = [n for sd in job.pop("dns_sd_configs") for n in sd["names"]]
            job["static_configs"] = [{"targets": targets[n], "labels": {"service": n}} for n in names if n in targets]
        for group in job.get("static_configs", []):
            group["targets"] = [rabbitmq if t.startswith("rabbitmq:") else t for t in group["targets"]]
    return config


@contextmanager
def running_prometheus(config: dict, tmp_path: Path) -> Iterator[str]:
    """Prometheus on a free loopback port with `config`; yields its base URL."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed: .ci/run installs it (apt-get install prometheus)"
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(tmp_path / "prometheus.log", "w")
    proc = subprocess.Popen([binary, f"--config.file={path}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # generous: a busy 2-core machine starts it slowly
        while True:
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=1)
                break
            except OSError:
                log.flush()
                why = f"prometheus not ready: {(tmp_path / 'prometheus.log').read_text()[-3000:]}"
                assert proc.poll() is None and time.monotonic() < deadline, why
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def api(url: str, path: str, **params) -> dict:
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}/api/v1/{path}?{query}", timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


def finite_points(url: str, expr: str, start: float, end: float) -> int:
    """How many finite values `expr` had between `start` and `end`, over all its series."""
    data = api(url, "query_range", query=expr, start=start, end=end, step=SCRAPE_S)
    return sum(1 for series in data["result"] for _, v in series["values"] if math.isfinite(float(v)))


def dashboard_queries(variables: dict[str, str]) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel, with Grafana's variables
    (the dashboard's own and `$__rate_interval`) replaced as Grafana would."""
    dashboard = json.loads(DASHBOARD.read_text())
    values = {"__rate_interval": f"{4 * SCRAPE_S}s", **variables}
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = re.sub(r"\$(\w+)", lambda m: values[m.group(1)], target["expr"])
            out.append((panel["title"], expr))
    return out
