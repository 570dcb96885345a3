"""Every metric Cartridge exports, in one place: names, help, labels, buckets.

Names follow Prometheus' conventions: `cartridge_<service>_<what>_<unit>`, base units
(seconds), `_total` for counters. Most values come from each service's `status()`
snapshot (`shared.metrics.export`); the histograms and the dead-letter reasons are
recorded where the event happens, once per flush, reload or upload, never per position.

A process records only once `recorder()` says so: when it serves its own endpoint
(`enable()`), or when `PROMETHEUS_MULTIPROC_DIR` is set because a parent (`cartridge up`)
collects every process's files. prometheus_client is imported here lazily: it decides at
import whether values go to those files, so the parent must set the variable first.
"""

from __future__ import annotations

import functools
import os
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Live gauges disappear with their process (`mark_process_dead`); the newest write wins.
GAUGE_MODE = "livemostrecent"

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
FLUSH_ROW_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000)
UPLOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

DEAD_LETTER_REASONS = ("too_large", "undecodable", "invalid")
"""Why ingest dead-lettered a message (the `reason` label; the message's
`x-cartridge-error` header has the full text): over `broker.max_message_bytes`, not a
transition batch of a known schema version, or contents that fail the checks."""


def _makers(registry: Any):
    from prometheus_client import REGISTRY, Counter, Gauge, Histogram

    registry = REGISTRY if registry is None else registry

    def counter(name, doc, labels=()):
        return Counter(name, doc, labels, registry=registry)

    def gauge(name, doc, labels=()):
        return Gauge(name, doc, labels, registry=registry, multiprocess_mode=GAUGE_MODE)

    def histogram(name, doc, buckets, labels=()):
        return Histogram(name, doc, labels, registry=registry, buckets=buckets)

    return counter, gauge, histogram


class _Group:
    """One service's metrics (created only in a process that runs that service, so an
    actor's endpoint does not carry the trainer's metrics at zero)."""

    def names(self) -> list[str]:
        """Every metric name as it appears in an exposition (counters with `_total`)."""
        return [m._name + ("_total" if m._type == "counter" else "") for m in vars(self).values()]


class ActorMetrics(_Group):
    def __init__(self, registry: Any = None):
        counter, gauge, histogram = _makers(registry)
        a = ("actor",)
        self.games = counter("cartridge_actor_games_total", "Self-play games finished.", a)
        self.positions = counter("cartridge_actor_positions_total", "Moves played in self-play.", a)
        self.simulations = counter("cartridge_actor_simulations_total", "Search simulations run.", a)
        self.evaluations = counter("cartridge_actor_network_evaluations_total",
            "Positions evaluated by the network (search leaves).", a)
        self.published = counter("cartridge_actor_published_positions_total",
            "Positions in messages the broker confirmed.", a)
        self.retries = counter("cartridge_actor_publish_retries_total",
            "Publishes tried again after the bus refused them.", a)
        self.unconfirmed = gauge("cartridge_actor_unconfirmed_messages",
            "Messages published and not yet confirmed.", a)
        self.model_version = gauge("cartridge_actor_model_version",
            "The model version this actor plays with (0: uniform).", a)
        self.paused = gauge("cartridge_actor_paused",
            "1 while self-play waits because the trainer asked (training.samples_per_position).", a)
        self.reload_latency = histogram("cartridge_actor_reload_latency_seconds",
            "From a model event to its model being served.", LATENCY_BUCKETS, a)


class IngestMetrics(_Group):
    def __init__(self, registry: Any = None):
        counter, gauge, histogram = _makers(registry)
        self.messages = counter("cartridge_ingest_messages_total", "Messages taken from the bus.")
        self.rows = counter("cartridge_ingest_stored_rows_total", "Positions stored (duplicates not counted).")
        self.duplicates = counter("cartridge_ingest_duplicate_batches_total",
            "Messages whose batch id was stored before, skipped.")
        self.dead_lettered = counter("cartridge_ingest_dead_lettered_messages_total",
            "Unusable messages moved to the dead-letter queue.", ("reason",))
        self.flushes = counter("cartridge_ingest_flushes_total", "Flush transactions committed.")
        self.write_failures = counter("cartridge_ingest_write_failures_total",
            "Flush attempts the database refused (each retried).")
        self.flush_rows = histogram("cartridge_ingest_flush_rows", "Rows per committed flush.",
            FLUSH_ROW_BUCKETS)
        self.commit_seconds = histogram("cartridge_ingest_commit_seconds",
            "Time to store one flush (COPY and commit, retries included).",
            COMMIT_BUCKETS)
        self.backlog = gauge("cartridge_ingest_backlog_messages",
            "Messages waiting in the transitions queue, as ingest last saw it.")
        for reason in DEAD_LETTER_REASONS:  # at zero from the start, so rates see the first one
            self.dead_lettered.labels(reason=reason)


class TrainerMetrics(_Group):
    def __init__(self, registry: Any = None):
        counter, gauge, histogram = _makers(registry)
        self.steps = counter("cartridge_trainer_steps_total", "Training steps taken.")
        self.step = gauge("cartridge_trainer_step", "The training step reached, over every run.")
        self.loss = gauge("cartridge_trainer_loss", "Loss of the last step, by part.", ("part",))
        self.learning_rate = gauge("cartridge_trainer_learning_rate", "The optimizer's learning rate.")
        self.samples = counter("cartridge_trainer_samples_total", "Positions drawn into training batches.")
        self.loaded = counter("cartridge_trainer_loaded_positions_total",
            "New positions loaded into the training window.")
        self.samples_per_position = gauge(
            "cartridge_trainer_samples_per_position",
            "Samples drawn per new position loaded, since the trainer started.")
        self.waiting = gauge("cartridge_trainer_waiting_for_positions",
            "1 while training waits for new positions (training.samples_per_position reached).")
        self.window = gauge("cartridge_trainer_window_positions", "Positions in the training window.")
        self.replay = gauge("cartridge_trainer_replay_positions", "Positions in the replay buffer.")
        self.window_oldest = gauge("cartridge_trainer_window_oldest_model_version",
            "The oldest model version that played a position in the window.")
        self.window_newest = gauge("cartridge_trainer_window_newest_model_version",
            "The newest model version that played a position in the window.")
        self.model_version = gauge("cartridge_trainer_model_version", "The newest model version published.")
        self.published = counter("cartridge_trainer_published_versions_total", "Model versions published.")
        self.export_seconds = histogram("cartridge_trainer_export_seconds", "Time to export a model to ONNX.",
            UPLOAD_BUCKETS)
        self.upload_seconds = histogram("cartridge_trainer_upload_seconds",
            "Time to store a model or a checkpoint.", UPLOAD_BUCKETS, ("object",))
        for what in ("model", "checkpoint"):
            self.upload_seconds.labels(object=what)


class EvaluatorMetrics(_Group):
    def __init__(self, registry: Any = None):
        counter, gauge, histogram = _makers(registry)
        self.versions = counter("cartridge_evaluator_versions_total",
            "Model versions done, by result (ok, failed, skipped).", ("result",))
        self.model_version = gauge("cartridge_evaluator_model_version", "The version evaluated last.")
        self.rating = gauge("cartridge_evaluator_rating",
            "Rating of the version evaluated last (Elo above random play).")
        self.rating_error = gauge("cartridge_evaluator_rating_error",
            "Standard error of that rating (Elo).")
        self.accuracy = gauge("cartridge_evaluator_optimal_move_ratio",
            "Share of optimal moves on the labelled positions, by stage and method "
            "(search, policy).", ("stage", "method"))
        self.games = counter("cartridge_evaluator_games_total", "Rating games played.")
        self.cpu = counter("cartridge_evaluator_cpu_seconds_total", "CPU time spent evaluating.")
        self.cost = gauge("cartridge_evaluator_version_cost_cpu_seconds",
            "CPU time the version evaluated last took.")
        self.rollbacks = counter("cartridge_evaluator_rollbacks_total", "Rollbacks decided.")


class Families:
    """Every service's metrics, each group created on first use, in `registry`
    (prometheus_client's default if None)."""

    def __init__(self, registry: Any = None):
        self.registry = registry

    @functools.cached_property
    def actor(self) -> ActorMetrics:
        return ActorMetrics(self.registry)

    @functools.cached_property
    def ingest(self) -> IngestMetrics:
        return IngestMetrics(self.registry)

    @functools.cached_property
    def trainer(self) -> TrainerMetrics:
        return TrainerMetrics(self.registry)

    @functools.cached_property
    def evaluator(self) -> EvaluatorMetrics:
        return EvaluatorMetrics(self.registry)

    def names(self) -> list[str]:
        """Every metric name, every service."""
        return [n for g in (self.actor, self.ingest, self.trainer, self.evaluator) for n in g.names()]


_families: Families | None = None


def enable() -> Families:
    """Record in this process from now on (idempotent)."""
    global _families
    if _families is None:
        _families = Families()
    return _families


def recorder() -> Families | None:
    """The metric objects if this process records, else None (then record nothing)."""
    if _families is None and os.environ.get(MULTIPROC_ENV):
        return enable()
    return _families
