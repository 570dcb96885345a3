"""What crosses process boundaries, typed.

- Transition batches (actor -> broker -> ingest) are msgpack: one stacked array per
  field, carried as dtype + shape + raw bytes, so decoding is `np.frombuffer`.
- Control events (trainer or a person -> every actor) are JSON, so a person can type
  one into the RabbitMQ management UI.
Every message carries `schema_version`; a reader rejects versions it does not know.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Literal

import msgspec
import numpy as np

from shared.status import AnyStatus

TRANSITIONS_SCHEMA_VERSION = 1
EVENTS_SCHEMA_VERSION = 1


class MessageError(ValueError):
    """A message that cannot be accepted; the text says what is wrong with it."""


class Array(msgspec.Struct, frozen=True):
    dtype: str
    shape: list[int]
    data: bytes

    @classmethod
    def of(cls, a: np.ndarray) -> "Array":
        a = np.ascontiguousarray(a)
        return cls(a.dtype.str, list(a.shape), a.tobytes())

    def numpy(self, field: str = "array") -> np.ndarray:
        try:
            dtype = np.dtype(self.dtype)
        except TypeError:
            raise MessageError(f"{field}: unknown dtype {self.dtype!r}") from None
        if dtype.hasobject:
            raise MessageError(f"{field}: object dtype is not allowed")
        if any(d < 0 for d in self.shape):
            raise MessageError(f"{field}: negative dimension in shape {self.shape}")
        expected = int(np.prod(self.shape, dtype=np.int64)) * dtype.itemsize
        if expected != len(self.data):
            raise MessageError(
                f"{field}: shape {self.shape} of {dtype} needs {expected} bytes, got {len(self.data)}"
            )
        return np.frombuffer(self.data, dtype=dtype).reshape(self.shape)


class TransitionBatch(msgspec.Struct, frozen=True, kw_only=True):
    """Positions of one or more finished games, one row per position."""

    schema_version: int = TRANSITIONS_SCHEMA_VERSION
    batch_id: str
    """Unique per message; republishing the same message keeps it (exactly-once key)."""
    env_id: str
    actor_id: str
    created_at: float
    game_id: Array  # uint8 [n, 16]: the game's uuid bytes
    ply: Array  # int16 [n]
    model_version: Array  # int32 [n]: the model that chose the move (0 = uniform)
    observation: Array  # uint8 [n, 2, H, W]
    legal_mask: Array  # bool [n, A]
    policy: Array  # float32 [n, A]: MCTS visit distribution
    value: Array  # float32 [n]: final outcome from the side to move's view
    search_value: Array | None = None
    """float32 [n]: the search's root value from the side to move's view (absent from
    older actors' messages: the outcome stands in)."""
    policy_weight: Array | None = None
    """float32 [n]: 1 where `policy` is a training target (a full search), 0 for a fast
    search's move (playout cap randomisation); absent from older actors' messages: 1."""

    @property
    def rows(self) -> int:
        return self.ply.shape[0] if self.ply.shape else 0


_transition_encoder = msgspec.msgpack.Encoder()
_transition_decoder = msgspec.msgpack.Decoder(TransitionBatch)


def encode_transitions(batch: TransitionBatch) -> bytes:
    return _transition_encoder.encode(batch)


def decode_transitions(body: bytes) -> TransitionBatch:
    """Bytes -> `TransitionBatch`, or `MessageError` saying why not (structure only;
    the contents are checked by `shared.transitions.from_batch`)."""
    try:
        batch = _transition_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise MessageError(f"not a transition batch: {exc}") from None
    if batch.schema_version != TRANSITIONS_SCHEMA_VERSION:
        raise MessageError(
            f"unknown transitions schema_version {batch.schema_version} "
            f"(this reader knows {TRANSITIONS_SCHEMA_VERSION})"
        )
    return batch


def new_batch_id() -> str:
    return uuid.uuid4().hex


# -- control events -------------------------------------------------------------------


class ModelPublished(msgspec.Struct, frozen=True, kw_only=True, tag="model_published", tag_field="type"):
    """The trainer stored a new model version; every actor should switch to it now."""

    schema_version: int = EVENTS_SCHEMA_VERSION
    env_id: str
    version: int
    key: str
    sha256: str
    size: int
    step: int = 0
    published_at: float = msgspec.field(default_factory=time.time)


class ReloadRequest(msgspec.Struct, frozen=True, kw_only=True, tag="reload", tag_field="type"):
    """Every actor should (re)load a model: `version` for that exact version (rollback),
    or null for the served one (the held version if one is held, else the newest).
    `hold`: keep serving it, ignoring newer models, until a reload without hold (the
    evaluator's regression guard sets it; a person may too)."""

    schema_version: int = EVENTS_SCHEMA_VERSION
    env_id: str | None = None
    version: int | None = None
    hold: bool = False
    published_at: float = msgspec.field(default_factory=time.time)


Stages = dict[str, float]  # {"early": .., "mid": .., "late": ..}


class ModelEvaluated(msgspec.Struct, frozen=True, kw_only=True, tag="model_evaluated", tag_field="type"):
    """The evaluator rated a model version (for dashboards and people; actors ignore it)."""

    schema_version: int = EVENTS_SCHEMA_VERSION
    env_id: str
    version: int
    step: int = 0
    rating: float | None = None
    """Elo above `random`, from every game so far; None if the evaluation failed."""
    rating_error: float | None = None
    games: int = 0
    optimal_pct: Stages = {}
    """Searched accuracy: % of labelled positions where the chosen move is optimal."""
    policy_optimal_pct: Stages = {}
    """The same for the raw policy (no search)."""
    evaluated_at: float = msgspec.field(default_factory=time.time)


class TrainerProgress(msgspec.Struct, frozen=True, kw_only=True, tag="trainer_progress", tag_field="type"):
    """The trainer's pace, announced every `interval_s` seconds while
    `training.samples_per_position` is set: actors pause self-play while `pause_actors`
    (the stored positions run ahead of what the trainer will sample), and play on if the
    announcements stop (a trainer that is gone must not stall them)."""

    schema_version: int = EVENTS_SCHEMA_VERSION
    env_id: str
    samples: int
    """Positions drawn into training batches since the trainer started."""
    positions: int
    """New positions counted since the trainer started."""
    pause_actors: bool
    interval_s: float
    """When the next announcement is due."""
    published_at: float = msgspec.field(default_factory=time.time)


ControlEvent = ModelPublished | ReloadRequest | ModelEvaluated | TrainerProgress
EventType = Literal["model_published", "reload", "model_evaluated", "trainer_progress"]
EVENT_TYPES = frozenset(EventType.__args__)


class UnknownEventType(MessageError):
    """Well-formed JSON whose `type` this reader does not know (a newer producer's event):
    nothing is wrong with it, it is simply not for this reader."""


class _Tagged(msgspec.Struct):
    type: str | None = None


_event_decoder = msgspec.json.Decoder(ControlEvent)
_tag_decoder = msgspec.json.Decoder(_Tagged)


def encode_event(event: ControlEvent) -> bytes:
    return msgspec.json.encode(event)


def decode_event(body: bytes) -> ControlEvent:
    """The known event `body` holds; `UnknownEventType` for an event of another type,
    `MessageError` for anything else that is not a valid event."""
    try:
        event = _event_decoder.decode(body)
    except msgspec.DecodeError as exc:
        try:
            kind = _tag_decoder.decode(body).type
        except msgspec.DecodeError:
            kind = None
        if isinstance(kind, str) and kind not in EVENT_TYPES:
            raise UnknownEventType(f"event of unknown type {kind!r}") from None
        raise MessageError(f"not a control event: {exc}") from None
    if event.schema_version != EVENTS_SCHEMA_VERSION:
        raise MessageError(
            f"unknown event schema_version {event.schema_version} "
            f"(this reader knows {EVENTS_SCHEMA_VERSION})"
        )
    return event


def trainer_progress(body: bytes) -> TrainerProgress | None:
    """The trainer's announcement if `body` is one (looked at by its type first: cheap for
    every other event); None for anything else, including a malformed one, which the
    event's usual reader reports."""
    try:
        if _tag_decoder.decode(body).type != "trainer_progress":
            return None
        event = decode_event(body)
    except (msgspec.DecodeError, MessageError):
        return None
    return event if isinstance(event, TrainerProgress) else None


_unknown_types_seen: set[tuple[str, str]] = set()


def read_event(body: bytes, reader: str, log: logging.Logger) -> ControlEvent | None:
    """`decode_event` for a listener on the events exchange: None for an event of a type
    this version does not know (a newer producer's: logged at WARNING once per type and
    reader, later ones at DEBUG, since such events may come every few seconds);
    `MessageError` for a malformed event, which the caller reports its own way."""
    try:
        return decode_event(body)
    except UnknownEventType as exc:
        key = (reader, str(exc))
        level = logging.DEBUG if key in _unknown_types_seen else logging.WARNING
        _unknown_types_seen.add(key)
        log.log(level, "ignored control event: %s (not for %s)", exc, reader)
        return None


# -- heartbeats -------------------------------------------------------------------------

HEARTBEAT_SCHEMA_VERSION = 1


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True, tag="heartbeat", tag_field="type"):
    """A service saying it is alive, and how it is doing: its `status()` snapshot, every
    `status.heartbeat_s` seconds, on the heartbeats exchange (JSON, readable in the
    management UI). The last one a service sends as it exits has state `stopped`."""

    schema_version: int = HEARTBEAT_SCHEMA_VERSION
    sent_at: float = msgspec.field(default_factory=time.time)
    interval_s: float
    """When the next one is due: silence for a few of these means the service is down."""
    host: str
    status: AnyStatus


_heartbeat_decoder = msgspec.json.Decoder(Heartbeat)


def encode_heartbeat(beat: Heartbeat) -> bytes:
    return msgspec.json.encode(beat)


def decode_heartbeat(body: bytes) -> Heartbeat:
    """`MessageError` for anything that is not a heartbeat this reader knows."""
    try:
        beat = _heartbeat_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise MessageError(f"not a heartbeat: {exc}") from None
    if beat.schema_version != HEARTBEAT_SCHEMA_VERSION:
        raise MessageError(f"unknown heartbeat schema_version {beat.schema_version} "
                           f"(this reader knows {HEARTBEAT_SCHEMA_VERSION})")
    return beat
