"""`cartridge arena`: how strong is a model? Play it against a fixed opponent or another model.

    cartridge arena --model latest --opponent random --games 100
    cartridge arena --model runs/a.onnx --opponent runs/b.onnx --games 400 --sims 50
    cartridge arena --model runs/a.onnx --opponent runs/b.onnx --opponent-set mcts.discount=1

The model searches `--sims` simulations per move without noise and plays its most
visited move. Opponents: the evaluator's anchors (`random`: a uniform legal move;
`one-ply`: takes a win, else blocks an immediate loss, else random; `alphabeta-<depth>`:
a depth-limited solver), or another model (an ONNX file or a version) searching alike,
with the config's `[mcts]` plus any `--opponent-set`. Every game starts with
`--opening-plies` uniformly random moves and each opening is played twice, colours
swapped, as in the evaluator's rating games: two searches without noise are
deterministic, so without openings two models would play the same two games over and
over. All games run together, one batched search per move.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from pathlib import Path

import numpy as np

from services.evaluator.match import anchor_player, is_anchor, play_games
from shared.config import Config
from shared.games import Game, get_game
from shared.inference import Evaluator, ModelError, OnnxEvaluator, UniformEvaluator
from shared.players import Player, search_player
from shared.service import base_parser, load_command_config


def elo(score: float) -> float:
    """Elo difference that expects `score` (0-1); clipped so a clean sweep stays finite."""
    score = min(max(score, 0.001), 0.999)
    return -400 * math.log10(1 / score - 1)


def match_summary(scores: np.ndarray) -> dict:
    """Wins, draws, losses, mean score and the Elo difference it implies, with the
    difference one standard error of the score either side gives."""
    mean = float(scores.mean())
    error = float(scores.std(ddof=1) / math.sqrt(len(scores))) if len(scores) > 1 else 0.0
    return {"wins": int((scores == 1).sum()), "draws": int((scores == 0.5).sum()),
            "losses": int((scores == 0).sum()), "score": round(mean, 4), "elo": round(elo(mean)),
            "elo_low": round(elo(mean - error)), "elo_high": round(elo(mean + error))}


def play_match(game: Game, model: Player, opponent: Player, games: int, opening_plies: int, seed: int = 0) -> dict:
    """`games` games of `model` against `opponent` (each opening twice, colours swapped),
    summed up from `model`'s side."""
    records = play_games(game, model, opponent, games // 2, opening_plies=opening_plies, seed=seed)
    return match_summary(np.array([r.score_a for r in records]))


async def load_model(config: Config, game: Game, which: str) -> Evaluator:
    """`latest`, a version number from the model store, or an ONNX file path."""
    if which == "uniform":
        return UniformEvaluator(game)
    if Path(which).is_file():
        return OnnxEvaluator.from_bytes(Path(which).read_bytes(), game, version=0,
                                        threads=config.actor.onnx_threads)
    from shared.model_store import open_model_store

    if which != "latest" and not which.isdecimal():  # e.g. a mistyped path
        raise ValueError(f"no model {which!r}: expected 'latest', a version number or an existing ONNX file")
    version = None if which == "latest" else int(which)
    async with open_model_store(config.storage) as store:
        info, data = await store.get_model(game.env_id, version, max_bytes=config.storage.max_model_bytes)
    return OnnxEvaluator.from_bytes(data, game, version=info.version, threads=config.actor.onnx_threads)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("cartridge arena", __doc__.splitlines()[0])
    parser.add_argument("--model", default="latest", help="'latest', a version number, an ONNX file, or 'uniform'")
    parser.add_argument("--opponent", default="random",
                        help="'random', 'one-ply', 'alphabeta-<depth>', or a model as --model takes it")
    parser.add_argument("--opponent-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config key for the opponent's search only (e.g. mcts.discount=1)")
    parser.add_argument("--games", type=int, default=100, help="games (even: each opening twice)")
    parser.add_argument("--sims", type=int, default=200, help="simulations per move of each model")
    parser.add_argument("--opening-plies", type=int, help="random plies opening every game "
                        "(default: eval.opening_plies)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.games < 2 or args.games % 2:
        parser.error(f"--games must be an even number of at least 2 (each opening is played with "
                     f"colours swapped), got {args.games}")
    config = load_command_config(parser, args)
    opponent_config = load_command_config(parser, argparse.Namespace(config=args.config,
                                                                     set=args.set + args.opponent_set))
    plies = config.eval.opening_plies if args.opening_plies is None else args.opening_plies
    game = get_game(config.common.env_id)
    try:
        evaluator = asyncio.run(load_model(config, game, args.model))
        if is_anchor(args.opponent):
            opponent = anchor_player(game, args.opponent, seed=args.seed)
        else:
            other = asyncio.run(load_model(opponent_config, game, args.opponent))
            opponent = search_player(game, other, args.sims, opponent_config.mcts)
        summary = play_match(game, search_player(game, evaluator, args.sims, config.mcts), opponent, args.games,
                             opening_plies=plies, seed=args.seed)
    except (OSError, ValueError, LookupError, ModelError) as exc:
        print(f"cartridge arena: {exc}", file=sys.stderr)
        return 2
    print(f"model {args.model} (version {evaluator.version}, {args.sims} sims) vs {args.opponent}: "
          f"{summary['wins']} wins, {summary['draws']} draws, {summary['losses']} losses of {args.games}, "
          f"{summary['elo']:+d} Elo ({summary['elo_low']:+d} to {summary['elo_high']:+d})")
    print(json.dumps({"model_version": evaluator.version, "opponent": args.opponent, "sims": args.sims,
                      "games": args.games, "opening_plies": plies, **summary}))
    return 0
