"""`cartridge ratings` and `cartridge eval` (real PostgreSQL, a real onnxruntime model)."""

from __future__ import annotations

import asyncio
import json

import torch

from cartridge import eval as eval_command
from cartridge import ratings
from services.trainer.export import export_onnx
from services.trainer.network import PolicyValueNet
from shared.evaluations import Evaluation, RatingGame, open_evaluations
from shared.games import get_game
from shared.model_store import ServingPointer

GAME = get_game("tictactoe")


def flags(config) -> list[str]:
    s = config.storage
    return ["--set", "common.env_id=tictactoe", "--set", f"storage.postgres_url={s.postgres_url}"]


def games(version: int, opponent: str, score: float, n: int) -> list[RatingGame]:
    return [RatingGame(version=version, player_a=f"v{version}", player_b=opponent, score_a=score, moves="5",
                       a_first=i % 2 == 0) for i in range(n)]


async def test_ratings_table_and_json(make_config, capsys):
    config = make_config()
    accuracy = {which: {s: {"optimal_pct": p} for s, p in zip(("early", "mid", "late"), (40.0, 60.0, 80.0))}
                for which in ("policy", "search")}
    async with open_evaluations(config.storage) as results:
        await results.record("tictactoe", None, [
            RatingGame(version=0, player_a="one-ply", player_b="random", score_a=1.0, moves="5", a_first=True)])
        await results.record("tictactoe", Evaluation(env_id="tictactoe", version=1, step=10, status="ok",
                                                     accuracy=accuracy, published_at=1e9), games(1, "random", 1.0, 6))
        await results.record("tictactoe", Evaluation(env_id="tictactoe", version=2, status="failed",
                                                     reason="not a valid ONNX model"))
        await results.record("tictactoe", Evaluation(env_id="tictactoe", version=3, step=30, status="ok",
                                                     accuracy=accuracy), games(3, "random", 0.0, 6))
        await results.record_serving("tictactoe", ServingPointer(version=1, hold=True, reason="test"))
    loop_free = asyncio.to_thread  # main() calls asyncio.run: run it outside this test's loop
    assert await loop_free(ratings.main, ["--json", *flags(config)]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_version = {r["version"]: r for r in rows}
    assert by_version[1]["rating"] > 0 > by_version[3]["rating"]
    assert by_version[1]["games"] == 6 and by_version[1]["rating_error"] > 0
    assert by_version[1]["optimal_pct"] == {"early": 40.0, "mid": 60.0, "late": 80.0}
    assert by_version[1]["policy_optimal_pct"]["late"] == 80.0
    assert [r["version"] for r in rows if r["served"]] == [1]
    assert by_version[2]["status"] == "failed" and by_version[2]["rating"] is None

    assert await loop_free(ratings.main, flags(config)) == 0
    table = capsys.readouterr().out.splitlines()
    assert "rating" in table[0]
    (served,) = [line for line in table if line.endswith("<- served")]
    assert served.split()[0] == "1" and "40/60/80" in served
    assert any("failed: not a valid ONNX model" in line for line in table)


def test_eval_measures_a_model_file_once(tmp_path, capsys):
    torch.manual_seed(0)
    path = tmp_path / "model.onnx"
    path.write_bytes(export_onnx(PolicyValueNet(GAME.obs_shape, GAME.num_actions, blocks=1, channels=8)))
    code = eval_command.main(["--model", str(path), "--set", "common.env_id=tictactoe",
                              "--set", "eval.simulations=4", "--set", "eval.positions=8", "--set", "eval.games=4",
                              "--set", "eval.game_simulations=2"])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    result = json.loads(out[-1])
    assert set(result["optimal_pct"]) == {"early", "mid", "late"}
    assert result["games"] == 10  # one pair of openings against each of the five anchors and result["rating_error"] > 0
    assert any(line.startswith("optimal moves, raw policy") for line in out)


def row(version: int, rating: float | None, fitted: bool) -> dict:
    stages = {"early": 50.0, "mid": None, "late": 90.0}
    return {"version": version, "step": 1000 * version, "status": "ok", "reason": "", "published_at": None,
            "rating": rating, "rating_error": None if rating is None else 40.0, "rating_fitted": fitted,
            "games": 12 if fitted else 0, "gain": None, "gain_error": None, "optimal_pct": stages,
            "policy_optimal_pct": stages, "served": version == 3}


def test_format_table_marks_stored_ratings_and_shows_a_dash_for_none():
    """A version out of the fit shows the rating stored at its evaluation (`*`), or `-` if it has none."""
    lines = ratings.format_table([row(1, None, False), row(2, 1100.4, False), row(3, 1250.0, True)]).splitlines()
    assert lines[1].split()[:4] == ["1", "1000", "-", "-"] and "*" not in lines[1]  # published, rating
    assert "1100 ± 40*" in lines[2]
    assert "1250 ± 40 " in lines[3] and "*" not in lines[3] and lines[3].endswith("<- served")
    assert "50/-/90" in lines[3]
    assert lines[-1].startswith("* as rated right after its own games")
    without_stored = ratings.format_table([row(1, None, False), row(3, 1250.0, True)]).splitlines()
    assert not without_stored[-1].startswith("*")  # no stored rating shown: no footnote
