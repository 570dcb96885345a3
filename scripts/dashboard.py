"""Write deploy/grafana/dashboards/cartridge.json, the Cartridge dashboard Grafana
provisions (`python scripts/dashboard.py`). The panels are listed here, readable; the
JSON is what Grafana wants. tests/test_dashboard.py checks the file matches this script;
tests/test_compose.py runs every query against a real Prometheus scraping a live run.

Queries aggregate without job or instance labels, so the same dashboard reads the
compose stack (one target per service) and `cartridge up` (one target for all).
`$queue` and `$dead_letter_queue` name RabbitMQ's queues (the broker.* keys).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "deploy" / "grafana" / "dashboards" / "cartridge.json"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # the provisioned data source's uid
R = "$__rate_interval"
SPARSE = "5m"  # events minutes apart (reloads, uploads): averaged over a longer window

# (row title, [(panel title, unit, [(expr, legend)]), ...]); "stat:" titles are single numbers.
ROWS = [
    ("Overview", [
        ("stat:Newest model", "none", [("max(cartridge_trainer_model_version)", "version")]),
        ("stat:Rating of the newest rated model", "none", [("max(cartridge_evaluator_rating)", "Elo above random")]),
        ("stat:Positions stored per second", "ops", [(f"sum(rate(cartridge_ingest_stored_rows_total[{R}]))", "")]),
        ("stat:Training step", "none", [("max(cartridge_trainer_step)", "")]),
    ]),
    ("Throughput", [
        ("Positions per second", "ops", [
            (f"sum(rate(cartridge_actor_positions_total[{R}]))", "played"),
            (f"sum(rate(cartridge_actor_published_positions_total[{R}]))", "confirmed by the broker"),
            (f"sum(rate(cartridge_ingest_stored_rows_total[{R}]))", "stored"),
        ]),
        ("Games per second", "ops", [(f"sum(rate(cartridge_actor_games_total[{R}]))", "games")]),
        ("Search per second", "ops", [
            (f"sum(rate(cartridge_actor_simulations_total[{R}]))", "simulations"),
            (f"sum(rate(cartridge_actor_network_evaluations_total[{R}]))", "network evaluations"),
        ]),
        ("Ingest flushes", "s", [
            (f"histogram_quantile(0.5, sum by (le) (rate(cartridge_ingest_commit_seconds_bucket[{R}])))",
             "commit p50"),
            (f"histogram_quantile(0.99, sum by (le) (rate(cartridge_ingest_commit_seconds_bucket[{R}])))",
             "commit p99"),
        ]),
        ("Rows per flush", "none", [
            (f"sum(rate(cartridge_ingest_flush_rows_sum[{R}])) / sum(rate(cartridge_ingest_flush_rows_count[{R}]))",
             "mean"),
        ]),
    ]),
    ("Queues", [
        ("Transitions backlog", "none", [
            ('sum(rabbitmq_detailed_queue_messages_ready{queue="$queue"})', "ready (RabbitMQ)"),
            ('sum(rabbitmq_detailed_queue_messages_unacked{queue="$queue"})', "unacked (RabbitMQ)"),
            ("sum(cartridge_ingest_backlog_messages)", "waiting, as ingest sees it"),
        ]),
        ("Dead letters", "none", [
            ('sum(rabbitmq_detailed_queue_messages{queue="$dead_letter_queue"})', "in the dead-letter queue"),
            ("sum by (reason) (cartridge_ingest_dead_lettered_messages_total)", "dead-lettered: {{reason}}"),
        ]),
        ("Publishing", "none", [
            ("sum(cartridge_actor_unconfirmed_messages)", "unconfirmed messages"),
            (f"sum(rate(cartridge_actor_publish_retries_total[{R}]))", "retries per second"),
            (f"sum(rate(cartridge_ingest_duplicate_batches_total[{R}]))", "duplicate batches per second"),
        ]),
    ]),
    ("Trainer", [
        ("Training steps per second", "ops", [(f"sum(rate(cartridge_trainer_steps_total[{R}]))", "steps")]),
        ("Loss", "none", [("max by (part) (cartridge_trainer_loss)", "{{part}}")]),
        ("Samples per new position", "none", [
            (f"sum(rate(cartridge_trainer_samples_total[{R}])) / sum(rate(cartridge_trainer_loaded_positions_total[{R}]))",
             "recent"),
            ("max(cartridge_trainer_samples_per_position)", "since the trainer started"),
        ]),
        ("Window and replay", "none", [
            ("max(cartridge_trainer_window_positions)", "window"),
            ("max(cartridge_trainer_replay_positions)", "replay buffer"),
        ]),
        ("Model versions in the window", "none", [
            ("max(cartridge_trainer_window_oldest_model_version)", "oldest"),
            ("max(cartridge_trainer_window_newest_model_version)", "newest"),
            ("max(cartridge_trainer_model_version) - max(cartridge_trainer_window_oldest_model_version)",
             "age of the oldest (versions)"),
        ]),
        ("Learning rate", "none", [("max(cartridge_trainer_learning_rate)", "learning rate")]),
        ("Export and upload", "s", [
            (f"sum(rate(cartridge_trainer_export_seconds_sum[{SPARSE}])) / sum(rate(cartridge_trainer_export_seconds_count[{SPARSE}]))",
             "ONNX export"),
            (f"sum by (object) (rate(cartridge_trainer_upload_seconds_sum[{SPARSE}])) / sum by (object) (rate(cartridge_trainer_upload_seconds_count[{SPARSE}]))",
             "upload: {{object}}"),
        ]),
    ]),
    ("Actors", [
        ("Model version per actor", "none", [
            ("max by (actor) (cartridge_actor_model_version)", "{{actor}}"),
            ("max(cartridge_trainer_model_version)", "published"),
        ]),
        ("Reload latency (event to model served)", "s", [
            (f"histogram_quantile(0.5, sum by (le) (rate(cartridge_actor_reload_latency_seconds_bucket[{SPARSE}])))",
             "p50"),
            (f"histogram_quantile(0.99, sum by (le) (rate(cartridge_actor_reload_latency_seconds_bucket[{SPARSE}])))",
             "p99"),
        ]),
        ("Positions per second per actor", "ops", [
            (f"sum by (actor) (rate(cartridge_actor_positions_total[{R}]))", "{{actor}}"),
        ]),
    ]),
    ("Strength", [
        ("Rating (Elo above random play)", "none", [
            ("max(cartridge_evaluator_rating)", "rating"),
            ("max(cartridge_evaluator_rating) + max(cartridge_evaluator_rating_error)", "+1 standard error"),
            ("max(cartridge_evaluator_rating) - max(cartridge_evaluator_rating_error)", "-1 standard error"),
        ]),
        ("Optimal moves on labelled positions", "percentunit", [
            ("max by (method, stage) (cartridge_evaluator_optimal_move_ratio)", "{{method}} {{stage}}"),
        ]),
        ("Evaluation cost", "s", [
            ("max(cartridge_evaluator_version_cost_cpu_seconds)", "CPU seconds, last version"),
            (f"sum(rate(cartridge_evaluator_cpu_seconds_total[{SPARSE}]))", "CPU share of the evaluator"),
        ]),
        ("Evaluated versions and rating games", "none", [
            ("sum by (result) (cartridge_evaluator_versions_total)", "versions {{result}}"),
            ("sum(cartridge_evaluator_games_total)", "rating games"),
            ("max(cartridge_evaluator_model_version)", "version evaluated last"),
        ]),
    ]),
]


def panel(panel_id: int, title: str, unit: str, queries, x: int, y: int, w: int, h: int) -> dict:
    stat = title.startswith("stat:")
    return {
        "id": panel_id,
        "type": "stat" if stat else "timeseries",
        "title": title.removeprefix("stat:"),
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"]}} if stat else {
            "legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [{"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
                    for i, (expr, legend) in enumerate(queries)],
    }


def textbox(name: str, label: str, default: str) -> dict:
    return {"type": "textbox", "name": name, "label": label, "query": default, "hide": 0,
            "current": {"text": default, "value": default}, "options": [{"selected": True, "text": default,
                                                                         "value": default}]}


def dashboard() -> dict:
    panels, next_id, y = [], 1, 0
    for row_title, row in ROWS:
        panels.append({"id": next_id, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})
        next_id, y = next_id + 1, y + 1
        per_line = 4 if row[0][0].startswith("stat:") else 3
        w, h = 24 // per_line, 4 if per_line == 4 else 8
        for i, (title, unit, queries) in enumerate(row):
            panels.append(panel(next_id, title, unit, queries, (i % per_line) * w, y + (i // per_line) * h, w, h))
            next_id += 1
        y += h * -(-len(row) // per_line)
    return {
        "uid": "cartridge",
        "title": "Cartridge",
        "description": "Continuous AlphaZero training: throughput, queues, trainer, actors, strength.",
        "tags": ["cartridge"],
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "10s",
        "timezone": "browser",
        "templating": {"list": [
            textbox("queue", "transitions queue", "cartridge.transitions"),
            textbox("dead_letter_queue", "dead-letter queue", "cartridge.transitions.dead"),
        ]},
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    if "--check" in sys.argv[1:]:
        sys.exit(0 if OUT.read_text() == render() else 1)
    OUT.write_text(render())
    print(f"wrote {OUT.relative_to(ROOT)}")
