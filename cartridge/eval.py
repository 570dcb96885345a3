"""`cartridge eval --model N|FILE`: measure one model once, by hand (nothing is stored).

    cartridge eval --model latest
    cartridge eval --model runs/model.onnx --set eval.simulations=400

Prints the accuracy on the labelled positions by stage (raw policy and search, each %
with its standard error) and the model's rating from `[eval] games` games against every
anchor (after the anchors' own ladder, as the evaluator plays it), then a JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys

from cartridge.arena import load_model
from services.evaluator.match import anchor_player, model_player, play_against
from services.evaluator.measure import measure
from services.evaluator.service import fit, play_ladder, records_of
from shared.evaluations import RatingGame
from shared.games import get_game
from shared.inference import ModelError
from shared.service import base_parser, load_command_config


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("cartridge eval", __doc__.splitlines()[0])
    parser.add_argument("--model", default="latest", help="'latest', a version number, or an ONNX file")
    args = parser.parse_args(argv)
    config = load_command_config(parser, args)
    cfg, game = config.eval, get_game(config.common.env_id)
    try:
        evaluator = asyncio.run(load_model(config, game, args.model))
    except (OSError, ValueError, LookupError, ModelError) as exc:
        print(f"cartridge eval: {exc}", file=sys.stderr)
        return 2
    accuracy = measure(game, evaluator, cfg, config.mcts)
    for which, label in (("policy", "raw policy"), ("search", f"search ({cfg.simulations} sims)")):
        parts = [f"{stage} {s.optimal_pct:.1f} ± {s.optimal_se:.1f}" for stage, s in getattr(accuracy, which).items()]
        print(f"optimal moves, {label}: " + ", ".join(parts))
    me = model_player(game, evaluator, cfg.game_simulations, config.mcts)
    openings = max(1, cfg.games // (2 * len(cfg.anchors)))
    results = play_against(game, me, [anchor_player(game, a, seed=1) for a in cfg.anchors], openings,
                           opening_plies=cfg.opening_plies, seed=1)
    games = play_ladder(game, cfg) + [
        RatingGame(version=1, player_a="model", player_b=name, score_a=r.score_a, moves=r.moves, a_first=r.a_first)
        for name, records in zip(cfg.anchors, results) for r in records]
    rating = fit(records_of(games), cfg.prior_draws)["model"]
    scores = {name: sum(r.score_a for r in records) for name, records in zip(cfg.anchors, results)}
    print(f"rating {rating.rating:.0f} ± {rating.stderr:.0f} over {int(rating.games)} games; score per anchor "
          + ", ".join(f"{n} {s:g}/{2 * openings}" for n, s in scores.items()))
    print(json.dumps({"model_version": evaluator.version, "rating": round(rating.rating, 1),
                      "rating_error": round(rating.stderr, 1), "games": int(rating.games),
                      "optimal_pct": accuracy.optimal_pct("search"),
                      "policy_optimal_pct": accuracy.optimal_pct("policy"), "scores": scores}))
    return 0
