"""The evaluator's results, in the replay's database (PostgreSQL, or the SQLite file of
`cartridge up`): next to the data that made the models.

Three tables, created idempotently on open:
- `evaluations`: one row per model version: status `ok`, `failed` (with the reason: a
  corrupt, foreign or missing model) or `skipped` (the evaluator was too far behind),
  the accuracy figures raw and searched per stage, the budget (sims, positions) and what
  it cost in CPU-seconds;
- `rating_games`: one row per rating game (players, A's score, the moves, who began, the
  version being rated; 0 for the anchors' own ladder);
- `serving`: one row per decision about which version actors serve (rollbacks, take-overs).
Ratings are a fit over the games (counted per pair: `tallies`), redone when asked
(`services.evaluator.ratings`), so they sharpen as games accumulate; each evaluation also
keeps its version's rating as fitted right after its games, which is what views show for
versions that have left the fit's window (`eval.rating_window`).
Back-end errors reach callers as `ReplayUnavailable`, as the replay's do.
"""

from __future__ import annotations

import time
from typing import Literal, Protocol

import msgspec

from shared.config import StorageConfig
from shared.model_store import ServingPointer
from shared.replay import ReplayUnavailable

Status = Literal["ok", "failed", "skipped"]


class Evaluation(msgspec.Struct, frozen=True, kw_only=True):
    env_id: str
    version: int
    step: int = 0
    status: Status
    reason: str = ""
    """Why it failed or was skipped."""
    accuracy: dict[str, dict[str, dict[str, float]]] = {}
    """`{"policy"|"search": {stage: {optimal_pct, optimal_se, keeps_pct, keeps_se, positions}}}`."""
    sims: int = 0
    """Simulations per position of the searched accuracy."""
    positions: int = 0
    """Positions per stage searched."""
    cost_cpu_s: float = 0.0
    published_at: float = 0.0
    evaluated_at: float = msgspec.field(default_factory=time.time)
    rating: float | None = None
    """Elo above random as fitted right after this version's games (None: not rated, or
    evaluated before ratings were kept)."""
    rating_error: float | None = None


class RatingGame(msgspec.Struct, frozen=True, kw_only=True):
    version: int
    """The version being rated when the game was played (0: the anchors' ladder)."""
    player_a: str
    player_b: str
    score_a: float
    moves: str
    a_first: bool
    played_at: float = msgspec.field(default_factory=time.time)


class Evaluations(Protocol):
    async def __aenter__(self) -> "Evaluations": ...

    async def __aexit__(self, *exc) -> None: ...

    async def record(self, env_id: str, evaluation: Evaluation | None = None,
                     games: list[RatingGame] = ()) -> None:
        """Store an evaluation (replacing an earlier row of its version) and its games in
        one transaction: a crash leaves both or neither."""

    async def evaluations(self, env_id: str) -> list[Evaluation]:
        """Every evaluation, by version."""

    async def games(self, env_id: str) -> list[RatingGame]:
        """Every rating game, in the order played."""

    async def tallies(self, env_id: str, since: int = 0) -> list[tuple[str, str, int, int, int]]:
        """`(player_a, player_b, wins, draws, losses)` of A, one row per ordered pair, over
        the anchors' ladder and the games played to rate versions `since` and newer:
        what a rating fit needs, counted by the database (the games themselves, moves and
        all, grow with every version)."""

    async def record_serving(self, env_id: str, pointer: ServingPointer) -> None: ...

    async def servings(self, env_id: str) -> list[ServingPointer]:
        """Every serving decision, oldest first."""


def open_evaluations(storage: StorageConfig) -> Evaluations:
    """The results store in the replay's database, not yet entered (`async with` it)."""
    if storage.replay_backend == "sqlite":
        from shared.evaluations.sqlite import SqliteEvaluations

        return SqliteEvaluations(storage)
    from shared.evaluations.postgres import PostgresEvaluations

    return PostgresEvaluations(storage)


# Both back ends store the same columns; accuracy travels as JSON text.
EVALUATION_COLUMNS = ("env_id", "version", "step", "status", "reason", "accuracy", "sims", "positions",
                      "cost_cpu_s", "published_at", "evaluated_at", "rating", "rating_error")
# Columns added to `evaluations` after its first release (nullable): each back end's
# migration adds them to an older table.
ADDED_EVALUATION_COLUMNS = ("rating", "rating_error")
GAME_COLUMNS = ("env_id", "version", "player_a", "player_b", "score_a", "moves", "a_first", "played_at")
SERVING_COLUMNS = ("env_id", "version", "hold", "reason", "decided_at")


def evaluation_row(e: Evaluation) -> tuple:
    return (e.env_id, e.version, e.step, e.status, e.reason, msgspec.json.encode(e.accuracy).decode(), e.sims,
            e.positions, e.cost_cpu_s, e.published_at, e.evaluated_at, e.rating, e.rating_error)


def evaluation_of(row) -> Evaluation:
    fields = dict(zip(EVALUATION_COLUMNS, row))
    fields["accuracy"] = msgspec.json.decode(fields["accuracy"])
    return msgspec.convert(fields, Evaluation)


def game_row(env_id: str, g: RatingGame) -> tuple:
    return (env_id, g.version, g.player_a, g.player_b, g.score_a, g.moves, g.a_first, g.played_at)


def game_of(row) -> RatingGame:
    return RatingGame(**dict(zip(GAME_COLUMNS[1:], row[1:])) | {"a_first": bool(row[6])})


def serving_of(row) -> ServingPointer:
    return ServingPointer(version=row[1], hold=bool(row[2]), reason=row[3], decided_at=row[4])


def table_sql(real: str, serial: str) -> str:
    """The three tables, with the back end's floating-point and auto-increment types."""
    return f"""
        CREATE TABLE IF NOT EXISTS evaluations (
            env_id text NOT NULL, version integer NOT NULL, step bigint NOT NULL,
            status text NOT NULL, reason text NOT NULL, accuracy text NOT NULL,
            sims integer NOT NULL, positions integer NOT NULL, cost_cpu_s {real} NOT NULL,
            published_at {real} NOT NULL, evaluated_at {real} NOT NULL, rating {real}, rating_error {real},
            PRIMARY KEY (env_id, version));
        CREATE TABLE IF NOT EXISTS rating_games (
            id {serial}, env_id text NOT NULL, version integer NOT NULL,
            player_a text NOT NULL, player_b text NOT NULL, score_a {real} NOT NULL,
            moves text NOT NULL, a_first boolean NOT NULL, played_at {real} NOT NULL);
        CREATE INDEX IF NOT EXISTS rating_games_version ON rating_games (env_id, version);
        CREATE TABLE IF NOT EXISTS serving (
            id {serial}, env_id text NOT NULL, version integer NOT NULL, hold boolean NOT NULL,
            reason text NOT NULL, decided_at {real} NOT NULL);
    """


def insert_sql(table: str, columns: tuple[str, ...], placeholder, upsert: str = "") -> str:
    """`placeholder(i)` -> `$i` or `?`; `upsert`: the conflict target to replace on."""
    values = ", ".join(placeholder(i + 1) for i in range(len(columns)))
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values})"
    if upsert:
        keys = {c.strip() for c in upsert.split(",")}
        sets = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
        sql += f" ON CONFLICT ({upsert}) DO UPDATE SET {sets}"
    return sql


def tallies_sql(placeholder) -> str:
    counts = ", ".join(f"sum(CASE WHEN score_a = {score} THEN 1 ELSE 0 END)" for score in ("1", "0.5", "0"))
    return (f"SELECT player_a, player_b, {counts} FROM rating_games"
            f" WHERE env_id = {placeholder(1)} AND (version = 0 OR version >= {placeholder(2)})"
            f" GROUP BY player_a, player_b ORDER BY player_a, player_b")


def select_sql(table: str, columns: tuple[str, ...], placeholder, order: str) -> str:
    return f"SELECT {', '.join(columns)} FROM {table} WHERE env_id = {placeholder(1)} ORDER BY {order}"


__all__ = ["Evaluation", "Evaluations", "RatingGame", "ReplayUnavailable", "open_evaluations"]
