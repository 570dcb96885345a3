"""What a running service says about itself: one snapshot struct per kind of service.

Every service has a `status()` that returns its snapshot: plain data, cheap to take and
with no side effects, so anything may ask for it at any moment. `cartridge up` prints its
progress line and decides when everything is stored from them; encoded with msgspec
(JSON or msgpack) they carry their kind in a `service` field, so one decoder reads any of
them (`msgspec.json.decode(data, type=AnyStatus)`) wherever they are sent next.
Counters count from the service's start.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Literal, Union

import msgspec

State = Literal["starting", "running", "stopping", "stopped"]


def instance_name() -> str:
    """`<host>-<pid>`: tells apart instances of a service that were given no name."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Status(msgspec.Struct, frozen=True, kw_only=True, tag_field="service"):
    name: str
    """Which instance: the actor id, or `<host>-<pid>`."""
    state: State


class ActorStatus(Status, tag="actor"):
    games: int
    """Games finished."""
    positions: int
    """Moves played (each one a training position once its game is published)."""
    simulations: int
    """Search simulations run, over all games."""
    model_version: int
    """The model playing now (0: the uniform evaluator, before any model)."""
    published_positions: int
    """Positions in messages the broker has confirmed."""
    unconfirmed: int
    """Messages published and not yet confirmed."""
    publish_retries: int
    """Publishes tried again after the bus refused them (outages)."""
    reload_latency_ms: float | None
    """From the last model event to serving its model; None before the first reload."""
    evaluations: int = 0
    """Positions the network evaluated (search leaves), over all games."""
    paused: bool = False
    """Self-play waits because the trainer announced that stored positions run ahead of it."""


class IngestStatus(Status, tag="ingest"):
    messages: int
    """Messages taken from the bus."""
    rows: int
    """Positions stored (duplicates not counted)."""
    duplicates: int
    """Messages whose batch id was stored before (redeliveries), skipped."""
    dead_lettered: int
    """Unusable messages moved to the dead-letter queue."""
    flushes: int
    """Transactions committed."""
    write_failures: int
    """Flush attempts the database refused (each one retried)."""
    settled: int
    """Messages done with: acked after their commit, or dead-lettered."""
    actor_models: dict[str, int]
    """The newest model version seen in each actor's games."""
    backlog: int | None = None
    """Messages waiting in the transitions queue when ingest last asked (None: not yet)."""
    dropped_partitions: int = 0
    """Replay partitions retention dropped (`storage.retain_positions`)."""
    dropped_rows: int = 0
    """Positions in those partitions."""
    dead_letter_depth: int = 0
    """Messages in the dead-letter queue (bounded by `broker.max_dead_letter_bytes`), as last seen."""


class TrainerStatus(Status, tag="trainer"):
    step: int
    """Training steps taken, over every run (resumed from the checkpoint)."""
    version: int
    """The newest model version published (or found in the store)."""
    replay_size: int
    """Positions in the replay buffer, as last seen."""
    window_size: int
    """Positions in the training window now."""
    loss: float | None
    """Total loss of the last step (None before the first)."""
    policy_loss: float | None
    value_loss: float | None
    samples: int
    """Positions drawn into training batches since this run started."""
    positions_loaded: int
    """Positions loaded into the window since this run started (`samples` over this:
    how often each new position is trained on)."""
    steps_this_run: int = 0
    """Training steps taken since this run started."""
    published: int = 0
    """Model versions published since this run started."""
    learning_rate: float = 0.0
    """The optimizer's learning rate now."""
    window_oldest_version: int = 0
    """The oldest model version that played a position in the window (0: uniform or empty)."""
    window_newest_version: int = 0
    """The newest model version that played a position in the window."""
    waiting_for_positions: bool = False
    """Training waits for new positions (`training.samples_per_position` reached)."""
    actors_paused: bool = False
    """The trainer asks actors to pause: stored positions run ahead of it by more than
    `training.position_lead`."""


class EvaluatorStatus(Status, tag="evaluator"):
    evaluated: int
    """Versions evaluated (ok) since start."""
    failed: int
    """Versions recorded as failed (corrupt, foreign or missing model)."""
    skipped: int
    """Versions recorded as skipped (more than `max_behind` waiting)."""
    version: int
    """The version evaluated last (0: none yet)."""
    rating: float | None
    """Its rating (Elo above `random`) and standard error when it was rated."""
    rating_error: float | None
    optimal_pct: dict[str, float]
    """Its searched accuracy per stage (% optimal moves)."""
    policy_optimal_pct: dict[str, float]
    """Its raw-policy accuracy per stage."""
    serving: int | None
    """The version actors are told to hold (None: the newest)."""
    rollbacks: int
    """Rollbacks decided since start."""
    cpu_seconds: float
    """CPU time spent evaluating since start."""
    games: int = 0
    """Rating games played since start (the anchors' ladder included)."""
    last_cost_cpu_s: float | None = None
    """CPU time the version evaluated last took (None: none yet)."""


class WebStatus(Status, tag="web"):
    """`cartridge web`: state only (its readiness is its database's and model store's)."""


AnyStatus = Union[ActorStatus, IngestStatus, TrainerStatus, EvaluatorStatus]


class Lifecycle:
    """A service's `State`: starting until `started`, then running until its stop event
    is set (stopping), stopped once the service's `async with` it ends, however it ends."""

    def __init__(self) -> None:
        self._stop: asyncio.Event | None = None
        self._ended = False

    def started(self, stop: asyncio.Event) -> None:
        self._stop = stop

    async def __aenter__(self) -> "Lifecycle":
        return self

    async def __aexit__(self, *exc) -> None:
        self._ended = True

    @property
    def state(self) -> State:
        if self._ended:
            return "stopped"
        if self._stop is None:
            return "starting"
        return "stopping" if self._stop.is_set() else "running"
