"""The evaluator's results store on both back ends (real PostgreSQL, a real SQLite file)."""

from __future__ import annotations

import pytest

from shared.evaluations import Evaluation, RatingGame, open_evaluations
from shared.model_store import ServingPointer


@pytest.fixture(params=["postgres", "sqlite"])
def storage(request, make_config):
    return make_config(storage={"replay_backend": request.param}).storage


async def test_rows_round_trip_and_a_version_is_stored_once(storage):
    accuracy = {"policy": {"early": {"optimal_pct": 50.0, "optimal_se": 5.0}}}
    games = [RatingGame(version=1, player_a="v1", player_b="random", score_a=1.0, moves="5 3", a_first=True),
             RatingGame(version=1, player_a="v1", player_b="random", score_a=0.5, moves="3 5", a_first=False)]
    async with open_evaluations(storage) as store:
        await store.record("tictactoe", Evaluation(env_id="tictactoe", version=1, status="failed", reason="x"))
        await store.record("tictactoe", Evaluation(env_id="tictactoe", version=1, step=7, status="ok",
                                                   accuracy=accuracy, cost_cpu_s=1.5, rating=812.5,
                                                   rating_error=40.25), games)
        await store.record("tictactoe", None, games[:1])
        await store.record_serving("tictactoe", ServingPointer(version=1, hold=True, reason="why"))
    async with open_evaluations(storage) as store:  # tables exist: opening again is fine
        (row,) = await store.evaluations("tictactoe")
        assert (row.version, row.step, row.status, row.accuracy, row.cost_cpu_s) == (1, 7, "ok", accuracy, 1.5)
        assert (row.rating, row.rating_error) == (812.5, 40.25)
        stored = await store.games("tictactoe")
        assert [(g.score_a, g.moves, g.a_first) for g in stored] == [(1.0, "5 3", True), (0.5, "3 5", False),
                                                                        (1.0, "5 3", True)]
        (serving,) = await store.servings("tictactoe")
        assert (serving.version, serving.hold, serving.reason) == (1, True, "why")
        assert await store.evaluations("connect4") == []


async def test_tallies_count_each_pair_over_the_ladder_and_the_versions_since(storage):
    def game(version, a, b, score):
        return RatingGame(version=version, player_a=a, player_b=b, score_a=score, moves="", a_first=True)
    async with open_evaluations(storage) as store:
        await store.record("tictactoe", None, [game(0, "one-ply", "random", 1.0), game(0, "one-ply", "random", 0.5)])
        await store.record("tictactoe", None, [game(1, "v1", "random", 1.0), game(1, "v1", "one-ply", 0.0)])
        await store.record("tictactoe", None, [game(2, "v2", "v1", 0.5), game(2, "v2", "v1", 1.0),
                                               game(2, "v2", "v1", 0.0), game(2, "random", "v2", 0.0)])
        await store.record("connect4", None, [game(2, "v2", "v1", 1.0)])
        everything = await store.tallies("tictactoe")
        assert [tuple(r) for r in everything] == [
            ("one-ply", "random", 1, 1, 0), ("random", "v2", 0, 0, 1), ("v1", "one-ply", 0, 0, 1),
            ("v1", "random", 1, 0, 0), ("v2", "v1", 1, 1, 1)]
        assert [tuple(r) for r in await store.tallies("tictactoe", 2)] == [
            ("one-ply", "random", 1, 1, 0), ("random", "v2", 0, 0, 1), ("v2", "v1", 1, 1, 1)]


async def test_a_table_from_before_ratings_were_kept_gains_their_columns(storage):
    """An `evaluations` table made by an earlier release (no rating columns) is migrated
    on open: its rows read back unrated, and new rows keep their ratings."""
    old_table = """CREATE TABLE evaluations (
        env_id text NOT NULL, version integer NOT NULL, step bigint NOT NULL, status text NOT NULL,
        reason text NOT NULL, accuracy text NOT NULL, sims integer NOT NULL, positions integer NOT NULL,
        cost_cpu_s real NOT NULL, published_at real NOT NULL, evaluated_at real NOT NULL,
        PRIMARY KEY (env_id, version))"""
    old_row = "INSERT INTO evaluations VALUES ('tictactoe', 1, 5, 'ok', '', '{}', 0, 0, 0, 0, 0)"
    if storage.replay_backend == "sqlite":
        import sqlite3

        with sqlite3.connect(storage.sqlite_path) as db:
            db.execute(old_table)
            db.execute(old_row)
    else:
        import asyncpg

        conn = await asyncpg.connect(storage.postgres_url)
        try:
            await conn.execute(old_table)
            await conn.execute(old_row)
        finally:
            await conn.close()
    for _ in range(2):  # the second open finds the columns there
        async with open_evaluations(storage) as store:
            await store.record("tictactoe", Evaluation(env_id="tictactoe", version=2, status="ok", rating=3.5,
                                                       rating_error=1.0))
            rows = await store.evaluations("tictactoe")
    assert [(e.version, e.step, e.rating, e.rating_error) for e in rows] == [(1, 5, None, None), (2, 0, 3.5, 1.0)]
