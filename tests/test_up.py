"""`cartridge up` end to end: it stores games and publishes models with no services, stops
cleanly on SIGINT, and the next run resumes from the same replay file and checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

import pytest

from tests.prometheus import free_port

REPO = Path(__file__).resolve().parent.parent

SMALL = [
    "--set", "common.env_id=tictactoe", "--set", "mcts.num_simulations=16",
    "--set", "actor.parallel_games=16", "--set", "training.min_transitions=200",
    "--set", "training.steps_per_iteration=20", "--set", "training.batch_size=64",
    "--set", "network.blocks=1", "--set", "network.channels=16",
    "--set", "eval.simulations=4", "--set", "eval.positions=8", "--set", "eval.games=4",
    "--set", "eval.game_simulations=4",
]


def run_until(tmp_path: Path, log: Path, pattern: str, timeout: float = 180, extra: tuple[str, ...] = (),
              while_running: Callable[[], None] = lambda: None) -> subprocess.CompletedProcess:
    """Start `cartridge up`, wait for `pattern` in its log, call `while_running`, then
    Ctrl-C it."""
    with open(log, "w") as out:
        # This checkout's code, not whichever one is installed (a worktree's tests run it).
        proc = subprocess.Popen([sys.executable, "-m", "cartridge.cli", "up", "--actors", "2", *SMALL,
                                 "--set", f"web.port={free_port()}", *extra],
                                cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not re.search(pattern, log.read_text()):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"cartridge up never logged {pattern!r}:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        try:
            while_running()
        finally:
            proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=90)
    return subprocess.CompletedProcess(proc.args, code)


def stored(tmp_path: Path) -> tuple[int, int]:
    db = sqlite3.connect(tmp_path / "runs" / "replay.sqlite")
    try:
        rows = db.execute("SELECT count(*) FROM transitions").fetchone()[0]
        distinct = db.execute("SELECT count(*) FROM (SELECT DISTINCT game_id, ply FROM transitions)").fetchone()[0]
        return rows, distinct
    finally:
        db.close()


def scrape(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.read().decode()


def value(text: str, series: str) -> float:
    """The value of one series (`name{labels}` as exposed) in a scrape; -1 if absent."""
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(found[1]) if found else -1


def check_one_endpoint_for_every_process(port: int, log: Path) -> None:
    """`cartridge up`'s endpoint has the parent's ingest and trainer, both actor
    processes and the evaluator process, merged by prometheus_client's multiprocess mode."""
    assert f"metrics: http://127.0.0.1:{port}/metrics" in log.read_text()
    deadline = time.monotonic() + 30
    while True:  # every process syncs its snapshot each second
        text = scrape(port)
        wanted = [value(text, f'cartridge_actor_positions_total{{actor="up-actor-{i}"}}') > 0 for i in (0, 1)]
        wanted += [value(text, f'cartridge_actor_model_version{{actor="up-actor-{i}"}}') >= 1 for i in (0, 1)]
        wanted += [value(text, "cartridge_ingest_stored_rows_total") > 0,
                   value(text, "cartridge_trainer_published_versions_total") >= 2,
                   value(text, 'cartridge_evaluator_versions_total{result="ok"}') >= 1]
        if all(wanted) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert all(wanted), (wanted, text)
    assert json.loads(scrape(port, "/healthz"))["alive"]
    ready = json.loads(scrape(port, "/readyz"))
    assert ready["ready"] and {s["service"] for s in ready["services"]} == {"ingest", "trainer"}
    print(f"METRICS scrape of cartridge up with 2 actors: {len(text.encode())} bytes")


def test_up_trains_stops_cleanly_and_resumes(tmp_path):
    # Model 2 published, and the evaluator (a worker process) rated a model.
    port = free_port()
    first = run_until(tmp_path, tmp_path / "first.log", r"(?s)(?=.*published model 2 )(?=.*model \d+: rating)",
                      extra=("--set", f"metrics.port={port}"),
                      while_running=lambda: check_one_endpoint_for_every_process(port, tmp_path / "first.log"))
    assert first.returncode == 0, (tmp_path / "first.log").read_text()[-3000:]
    text = (tmp_path / "first.log").read_text()
    assert re.search(r"games/s, .* positions/s \| replay \d+ positions \| step \d+", text) or "stopped:" in text
    rows, distinct = stored(tmp_path)
    assert rows > 0 and rows == distinct  # every position once
    db = sqlite3.connect(tmp_path / "runs" / "replay.sqlite")
    try:
        assert db.execute("SELECT count(*) FROM evaluations WHERE status = 'ok'").fetchone()[0] >= 1
    finally:
        db.close()
    models = sorted((tmp_path / "runs" / "models" / "tictactoe" / "models").glob("*.onnx"))
    assert len(models) >= 2
    stopped = re.search(r"stopped: (\d+) positions stored this run, model (\d+), step (\d+)", text)
    assert stopped, text[-2000:]
    version, step = int(stopped[2]), int(stopped[3])

    with socket.socket() as taken:  # the metrics port is taken: a warning, and up runs on
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        # A newer model, and games of this run stored (the trainer, resumed, may publish
        # before the actors have finished a game).
        second = run_until(tmp_path, tmp_path / "second.log",
                           rf"(?s)(?=.*published model {version + 1} )(?=.*ingest: \S+ rows/s, [1-9]\d* rows stored)",
                           extra=("--set", f"metrics.port={busy}"))
    assert second.returncode == 0
    text2 = (tmp_path / "second.log").read_text()
    assert f"no metrics endpoint: metrics.port: cannot listen on 127.0.0.1:{busy}" in text2
    resumed = re.search(rf"resumed from checkpoint: model {version}, step (\d+)", text2)
    assert resumed and 0 < int(resumed[1]) <= step  # the newest checkpoint, not a fresh start
    rows2, distinct2 = stored(tmp_path)
    assert rows2 > rows and rows2 == distinct2  # the same replay file, grown, still no duplicates


def test_up_stops_by_itself_after_minutes(tmp_path):
    """`--minutes N` makes a learning run one command: it stops cleanly on its own."""
    run = subprocess.run([sys.executable, "-m", "cartridge.cli", "up", "--actors", "1", "--minutes", "0.25", *SMALL,
                          "--set", f"web.port={free_port()}", "--set", f"metrics.port={free_port()}"],
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ran for 0.25 minutes (--minutes)" in run.stderr
    assert re.search(r"stopped: \d+ positions stored this run", run.stderr), run.stderr[-2000:]

    bad = subprocess.run([sys.executable, "-m", "cartridge.cli", "up", "--minutes", "0"],
                         cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--minutes: expected a number of minutes > 0, got '0'" in bad.stderr


def test_up_serves_the_web_page_and_prints_its_url(tmp_path):
    port = free_port()
    log = tmp_path / "up.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cartridge.cli", "up", "--actors", "1", *SMALL,
                                 "--set", f"web.port={port}", "--set", "status.heartbeat_s=0.5"],
                                cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while f"web page at http://127.0.0.1:{port}/" not in log.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read().decode()
            assert "<title>Cartridge</title>" in page and "/static/app.js" in page
            while True:  # ingest and the trainer of this process, seen live; the in-process queue
                overview = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/overview", timeout=10).read())
                if {i["service"] for i in overview["live"]["instances"]} >= {"ingest", "trainer"}:
                    break
                assert time.monotonic() < deadline, overview
                time.sleep(0.3)
            assert overview["env_id"] == "tictactoe" and overview["errors"] == []
            assert overview["queues"][0]["name"] == "transitions (in-process bus)"
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=90)
    assert code == 0, log.read_text()[-3000:]


def test_up_runs_on_without_the_page_when_the_web_port_is_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "cartridge.cli", "up", "--actors", "1", "--minutes", "0.1", *SMALL,
                                 "--set", f"web.port={port}", "--set", f"metrics.port={free_port()}"],
                                cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                                capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"no web page: port {port} on 127.0.0.1 is taken" in result.stderr and "web.port" in result.stderr
    assert "web page at" not in result.stdout + result.stderr
