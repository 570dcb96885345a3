"""The monitoring files in deploy/: Prometheus' configuration passes `promtool`, the
Grafana provisioning files and the dashboard have what Grafana's provisioning reads,
and every metric a panel queries is one Cartridge exports. (Every query returning data
from a live run scraped by a real Prometheus: tests/test_compose.py.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from shared.metrics.families import Families

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD = json.loads((DEPLOY / "grafana" / "dashboards" / "cartridge.json").read_text())
DATASOURCES = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
PROVIDERS = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "cartridge.yml").read_text())
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_promtool_accepts_the_prometheus_configuration():
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: .ci/run installs it (apt-get install prometheus)"
    checked = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_the_dashboard_file_is_what_the_script_writes():
    checked = subprocess.run([sys.executable, "scripts/dashboard.py", "--check"], cwd=ROOT)
    assert checked.returncode == 0, "deploy/grafana/dashboards/cartridge.json is stale: run scripts/dashboard.py"


def test_datasource_provisioning():
    assert DATASOURCES["apiVersion"] == 1
    (source,) = DATASOURCES["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy" and source["isDefault"] is True
    assert source["name"] and source["uid"]
    assert source["url"] == "http://prometheus:9090" and "prometheus" in COMPOSE["services"]


def test_dashboard_provisioning():
    assert PROVIDERS["apiVersion"] == 1
    (provider,) = PROVIDERS["providers"]
    assert provider["type"] == "file" and provider["name"] and provider["folder"]
    mounts = dict(reversed(v.split(":")[:2]) for v in COMPOSE["services"]["grafana"]["volumes"])
    # the provider reads the folder compose mounts the repository's dashboards into
    assert mounts[provider["options"]["path"]] == "./deploy/grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"


def test_dashboard_structure():
    d = DASHBOARD
    assert d["uid"] == "cartridge" and d["title"] and isinstance(d["schemaVersion"], int) and d["schemaVersion"] >= 36
    assert "id" not in d or d["id"] is None  # provisioning assigns the id
    uid = DATASOURCES["datasources"][0]["uid"]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in d["templating"]["list"]}
    panels = [p for p in d["panels"] if p["type"] != "row"]
    assert len(panels) >= 20
    for p in panels:
        assert p["type"] in ("timeseries", "stat") and p["title"], p
        assert set(p["gridPos"]) == {"x", "y", "w", "h"} and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p
        assert p["datasource"] == {"type": "prometheus", "uid": uid}, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"]["uid"] == uid, p["title"]
            for name in re.findall(r"\$(\w+)", t["expr"]):
                assert name in variables or name.startswith("__"), (p["title"], name)
    titles = " / ".join(p["title"].lower() for p in panels)
    for subject in ("positions per second", "backlog", "dead letters", "training steps", "samples per new position",
                    "model version per actor", "reload latency", "rating", "optimal moves"):
        assert subject in titles, subject


def test_every_queried_metric_is_exported():
    exported = set(Families(CollectorRegistry()).names())
    queried = {name for p in DASHBOARD["panels"] for t in p.get("targets", [])
               for name in re.findall(r"\b(cartridge_\w+)", t["expr"])}
    assert queried
    missing = {n for n in queried if re.sub(r"_(bucket|sum|count)$", "", n) not in exported}
    assert not missing, missing
