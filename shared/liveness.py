"""What the heartbeats say: every service instance seen, whether it is up, and its rates.

Fed with heartbeats (or, inside `cartridge up`, with status snapshots taken directly),
it keeps each instance's last two snapshots (rates come from their difference) and a
short history of the figures worth plotting (positions stored per second, the trainer's
loss by step). `cartridge status` and the web page both read it.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import msgspec

from shared.messages import Heartbeat
from shared.status import ActorStatus, AnyStatus, EvaluatorStatus, IngestStatus, TrainerStatus

HISTORY = 2000  # points kept per plotted series


@dataclass
class Instance:
    service: str
    name: str
    host: str
    interval_s: float
    last: AnyStatus
    last_at: float
    previous: AnyStatus | None = None
    previous_at: float = 0.0

    def rate(self, counter: str) -> float | None:
        """`counter` per second between the last two snapshots (None before two)."""
        if self.previous is None or self.last_at <= self.previous_at:
            return None
        return max(0.0, getattr(self.last, counter) - getattr(self.previous, counter)) / (self.last_at - self.previous_at)

    def problem(self, now: float, missed_beats: int) -> str | None:
        """Why this instance counts as down, or None while it is up."""
        silent = now - self.last_at
        if self.last.state == "stopped":
            return f"stopped {silent:.0f} s ago"
        if silent > missed_beats * self.interval_s:
            return f"no heartbeat for {silent:.0f} s (one due every {self.interval_s:g} s)"
        return None


@dataclass
class LiveView:
    missed_beats: int = 3
    instances: dict[tuple[str, str], Instance] = field(default_factory=dict)
    stored_rate: deque = field(default_factory=lambda: deque(maxlen=HISTORY))  # (time, positions/s)
    loss: deque = field(default_factory=lambda: deque(maxlen=HISTORY))  # (step, loss, time)

    def observe(self, status: AnyStatus, at: float | None = None, *, interval_s: float = 5.0, host: str = "") -> None:
        at = time.time() if at is None else at
        service = type(status).__struct_config__.tag
        key = (service, status.name)
        seen = self.instances.get(key)
        if seen is None:
            seen = self.instances[key] = Instance(service, status.name, host, interval_s, status, at)
        elif at >= seen.last_at:
            seen.previous, seen.previous_at = seen.last, seen.last_at
            seen.last, seen.last_at, seen.interval_s = status, at, interval_s
        else:
            return  # an older beat, delivered late: the newer one stands
        if isinstance(status, IngestStatus) and (rate := seen.rate("rows")) is not None:
            self.stored_rate.append((at, rate))
        if isinstance(status, TrainerStatus) and status.loss is not None:
            if not self.loss or status.step > self.loss[-1][0]:
                self.loss.append((status.step, status.loss, at))

    def observe_beat(self, beat: Heartbeat) -> None:
        self.observe(beat.status, beat.sent_at, interval_s=beat.interval_s, host=beat.host)

    # -- reading -----------------------------------------------------------------------
    def down(self, now: float | None = None) -> list[tuple[Instance, str]]:
        now = time.time() if now is None else now
        return [(i, why) for i in self.sorted() if (why := i.problem(now, self.missed_beats))]

    def sorted(self) -> list[Instance]:
        order = {"trainer": 0, "ingest": 1, "evaluator": 2, "actor": 3}
        return sorted(self.instances.values(), key=lambda i: (order.get(i.service, 9), i.name))

    def of(self, kind: type) -> list[Instance]:
        return [i for i in self.sorted() if isinstance(i.last, kind)]

    def actor_models(self) -> dict[str, int]:
        """Each actor's model version: from its own heartbeat, else from what ingest saw in its games."""
        models: dict[str, int] = {}
        for ingest in self.of(IngestStatus):
            models.update(ingest.last.actor_models)
        for actor in self.of(ActorStatus):
            models[actor.name] = actor.last.model_version
        return dict(sorted(models.items()))

    def snapshot(self, now: float | None = None) -> dict:
        """Plain data for the web page: every instance with its state and rates."""
        now = time.time() if now is None else now
        rows = []
        for i in self.sorted():
            row = {"service": i.service, "name": i.name, "host": i.host, "age_s": round(now - i.last_at, 1),
                   "problem": i.problem(now, self.missed_beats), "status": msgspec.to_builtins(i.last)}
            if isinstance(i.last, ActorStatus):
                row["positions_per_s"] = i.rate("positions")
            elif isinstance(i.last, IngestStatus):
                row["positions_per_s"] = i.rate("rows")
            elif isinstance(i.last, TrainerStatus):
                row["samples_per_position"] = samples_per_position(i.last)
            rows.append(row)
        return {"instances": rows, "actor_models": self.actor_models(),
                "stored_per_s": [[t, r] for t, r in self.stored_rate],
                "loss": [[s, l, t] for s, l, t in self.loss]}


def samples_per_position(t: TrainerStatus) -> float | None:
    """How often each new position is trained on (this run): samples drawn / positions loaded."""
    return t.samples / t.positions_loaded if t.positions_loaded else None


def evaluated(view: LiveView) -> EvaluatorStatus | None:
    found = [i.last for i in view.of(EvaluatorStatus) if i.last.version]
    return max(found, key=lambda s: s.version, default=None)
