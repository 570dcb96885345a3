"""A service's `status()` snapshot, turned into its Prometheus metrics.

Every service's `run()` is wrapped in `exported(self)`: while it runs, the service counts
for `/readyz`, and if this process records metrics (`families.recorder()`), its snapshot
is copied into them every `SYNC_EVERY_S` seconds and once more when it ends. Counters
grow by the difference between two snapshots (the snapshot's counters count from the
service's start); gauges take the snapshot's value; a value not known yet (no loss
before the first step, no rating before the first evaluation) is NaN, which graphs show
as a gap. Nothing of this runs on a hot path: a snapshot is a handful of attribute reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any, AsyncIterator

from shared.metrics.families import Families, recorder
from shared.metrics.health import HEALTH
from shared.status import ActorStatus, EvaluatorStatus, IngestStatus, Status, TrainerStatus

SYNC_EVERY_S = 1.0
STAGES = ("early", "mid", "late")


def _grow(counter, now: float, before: float) -> None:
    if now > before:
        counter.inc(now - before)


def _known(value: float | None) -> float:
    return math.nan if value is None else value


def _actor(f: Families, s: ActorStatus, b: ActorStatus | None) -> None:
    m, who = f.actor, {"actor": s.name}
    for counter, field in ((m.games, "games"), (m.positions, "positions"), (m.simulations, "simulations"),
                           (m.evaluations, "evaluations"), (m.published, "published_positions"),
                           (m.retries, "publish_retries")):
        _grow(counter.labels(**who), getattr(s, field), getattr(b, field) if b else 0)
    m.unconfirmed.labels(**who).set(s.unconfirmed)
    m.reload_latency.labels(**who)  # at zero before the first reload, so rates see it
    m.model_version.labels(**who).set(s.model_version)
    m.paused.labels(**who).set(s.paused)


def _ingest(f: Families, s: IngestStatus, b: IngestStatus | None) -> None:
    m = f.ingest
    for counter, field in ((m.messages, "messages"), (m.rows, "rows"), (m.duplicates, "duplicates"),
                           (m.flushes, "flushes"), (m.write_failures, "write_failures")):
        _grow(counter, getattr(s, field), getattr(b, field) if b else 0)
    m.backlog.set(_known(s.backlog))


def _trainer(f: Families, s: TrainerStatus, b: TrainerStatus | None) -> None:
    m = f.trainer
    for counter, field in ((m.steps, "steps_this_run"), (m.samples, "samples"), (m.loaded, "positions_loaded"),
                           (m.published, "published")):
        _grow(counter, getattr(s, field), getattr(b, field) if b else 0)
    m.step.set(s.step)
    for part, value in (("total", s.loss), ("policy", s.policy_loss), ("value", s.value_loss)):
        m.loss.labels(part=part).set(_known(value))
    m.learning_rate.set(s.learning_rate)
    m.samples_per_position.set(s.samples / s.positions_loaded if s.positions_loaded else math.nan)
    m.waiting.set(s.waiting_for_positions)
    m.window.set(s.window_size)
    m.replay.set(s.replay_size)
    m.window_oldest.set(s.window_oldest_version)
    m.window_newest.set(s.window_newest_version)
    m.model_version.set(s.version)


def _evaluator(f: Families, s: EvaluatorStatus, b: EvaluatorStatus | None) -> None:
    m = f.evaluator
    for result, field in (("ok", "evaluated"), ("failed", "failed"), ("skipped", "skipped")):
        _grow(m.versions.labels(result=result), getattr(s, field), getattr(b, field) if b else 0)
    for counter, field in ((m.games, "games"), (m.cpu, "cpu_seconds"), (m.rollbacks, "rollbacks")):
        _grow(counter, getattr(s, field), getattr(b, field) if b else 0)
    m.model_version.set(s.version)
    m.rating.set(_known(s.rating))
    m.rating_error.set(_known(s.rating_error))
    m.cost.set(_known(s.last_cost_cpu_s))
    for method, pct in (("search", s.optimal_pct), ("policy", s.policy_optimal_pct)):
        for stage in STAGES:
            m.accuracy.labels(stage=stage, method=method).set(pct[stage] / 100 if stage in pct else math.nan)


APPLY = {ActorStatus: _actor, IngestStatus: _ingest, TrainerStatus: _trainer, EvaluatorStatus: _evaluator}


class StatusExport:
    """Copies one service's successive snapshots into `families`."""

    def __init__(self, families: Families):
        self.families = families
        self.last: Status | None = None

    def apply(self, status: Status) -> None:
        APPLY[type(status)](self.families, status, self.last)
        self.last = status


@contextlib.asynccontextmanager
async def exported(service: Any) -> AsyncIterator[None]:
    """Around a service's `run()`: readiness, and its metrics if this process records."""
    families = recorder()
    with HEALTH.tracking(service):
        if families is None:
            yield
            return
        export = StatusExport(families)

        async def sync() -> None:
            while True:
                export.apply(service.status())
                await asyncio.sleep(SYNC_EVERY_S)

        task = asyncio.create_task(sync(), name=f"metrics of {type(service).__name__}")
        try:
            yield
        finally:
            task.cancel()
            await asyncio.wait([task])
            export.apply(service.status())  # the last counts, as the service ends
