"""What evaluating one model version costs with the `[eval]` defaults (a measurement, not
a test): CPU-seconds of each part and the standard error each figure gets for it.

Connect4, the default network (random weights, so games are as long as a weak model's),
one onnxruntime thread, on the labelled positions in the package. The anchors' ladder is
played once per run of the evaluator, not per version: reported apart. Last line: JSON.

    .venv/bin/python bench/evaluator_version.py [--set eval.games=40 ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from services.evaluator.match import anchor_player, model_player, play_against  # noqa: E402
from services.evaluator.measure import measure  # noqa: E402
from services.evaluator.service import fit, play_ladder, records_of  # noqa: E402
from services.trainer.export import export_onnx  # noqa: E402
from services.trainer.network import build_network  # noqa: E402
from shared.config import load_config, parse_overrides  # noqa: E402
from shared.evaluations import RatingGame  # noqa: E402
from shared.games import get_game  # noqa: E402
from shared.inference import OnnxEvaluator  # noqa: E402


def cpu(fn, *args, **kwargs):
    start = time.process_time()
    result = fn(*args, **kwargs)
    return result, round(time.process_time() - start, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args()
    config = load_config(environ={}, overrides={"common": {"env_id": "connect4"}, **parse_overrides(args.set)})
    cfg, game = config.eval, get_game("connect4")
    torch.manual_seed(0)
    model = OnnxEvaluator.from_bytes(export_onnx(build_network(game, config.network)), game, version=1,
                                     threads=cfg.onnx_threads)
    out: dict = {"config": {k: getattr(cfg, k) for k in ("simulations", "positions", "games", "game_simulations")}}

    ladder, out["ladder_cpu_s"] = cpu(play_ladder, game, cfg)
    print(f"anchor ladder (once per evaluator run): {len(ladder)} games, {out['ladder_cpu_s']} CPU-s", flush=True)

    policy_only = cfg.__class__(**{**{f: getattr(cfg, f) for f in cfg.__struct_fields__}, "positions": 1})
    _, raw_cpu = cpu(measure, game, model, policy_only, config.mcts)
    accuracy, out["accuracy_cpu_s"] = cpu(measure, game, model, cfg, config.mcts)
    out["raw_policy_cpu_s_upper"] = raw_cpu  # raw policy on every position + 1 searched per stage
    out["accuracy"] = {which: {stage: {"optimal_pct": round(s.optimal_pct, 1), "se": round(s.optimal_se, 1),
                                       "positions": s.positions}
                               for stage, s in getattr(accuracy, which).items()} for which in ("policy", "search")}
    print(f"accuracy: {out['accuracy_cpu_s']} CPU-s (raw policy alone at most {raw_cpu})", out["accuracy"], flush=True)

    # The opponents a new version meets most often: the two anchors its rating lies between.
    opponents = ["one-ply", "alphabeta-2"]
    me = model_player(game, model, cfg.game_simulations, config.mcts)
    results, out["games_cpu_s"] = cpu(play_against, game, me, [anchor_player(game, a, seed=1) for a in opponents],
                                      cfg.games // (2 * len(opponents)), opening_plies=cfg.opening_plies, seed=1)
    games = ladder + [RatingGame(version=1, player_a="v1", player_b=name, score_a=r.score_a, moves=r.moves,
                                 a_first=r.a_first) for name, records in zip(opponents, results) for r in records]
    rating = fit(records_of(games), cfg.prior_draws)["v1"]
    out["rating"] = {"rating": round(rating.rating), "se": round(rating.stderr), "games": int(rating.games)}
    out["per_version_cpu_s"] = round(out["accuracy_cpu_s"] + out["games_cpu_s"], 2)
    print(f"rating games: {int(rating.games)} games, {out['games_cpu_s']} CPU-s, rating {rating.rating:.0f} "
          f"± {rating.stderr:.0f}", flush=True)
    print(f"per version: {out['per_version_cpu_s']} CPU-s", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
