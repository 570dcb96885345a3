"""`cartridge arena`: how strong is a model? Play it against a fixed opponent.

    cartridge arena --model latest --opponent random --games 100
    cartridge arena --model runs/model.onnx --opponent one-ply --sims 200

The model searches `--sims` simulations per move without noise and plays its most
visited move; the sides alternate who starts. Opponents: `random` (uniform legal move),
`one-ply` (takes a win, else blocks an immediate loss, else random), or another ONNX file.
All games run together, one batched search per model move.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np

from shared.config import Config, MCTSConfig
from shared.games import Game, get_game
from shared.inference import Evaluator, ModelError, OnnxEvaluator, UniformEvaluator
from shared.players import Player, one_ply_player, random_player, search_player
from shared.service import base_parser, load_command_config


def play_match(game: Game, model: Player, opponent: Player, games: int) -> dict[str, int]:
    """Model's wins, draws and losses over `games` games; it starts the even-numbered ones."""
    boards = game.initial_boards(games)
    model_first = np.arange(games) % 2 == 0
    result = np.zeros(games)  # +1 model won, -1 lost, 0 draw
    live = np.ones(games, bool)
    ply = 0
    while live.any():
        model_moves = live & (model_first == (ply % 2 == 0))
        for is_model, who, player in ((True, model_moves, model), (False, live & ~model_moves, opponent)):
            rows = np.flatnonzero(who)
            if not len(rows):
                continue
            actions = player(boards[rows])
            after, done, value = game.play(boards[rows], actions)
            boards[rows] = after
            ended = rows[done]
            # value < 0: whoever just moved won.
            won = value[done] < 0
            result[ended] = np.where(won, 1 if is_model else -1, 0)
            live[ended] = False
        ply += 1
    return {"wins": int((result > 0).sum()), "draws": int((result == 0).sum()), "losses": int((result < 0).sum())}


async def load_model(config: Config, game: Game, which: str) -> Evaluator:
    """`latest`, a version number from the model store, or an ONNX file path."""
    if which == "uniform":
        return UniformEvaluator(game)
    if Path(which).is_file():
        return OnnxEvaluator.from_bytes(Path(which).read_bytes(), game, version=0,
                                        threads=config.actor.onnx_threads)
    from shared.model_store import open_model_store

    version = None if which == "latest" else int(which)
    async with open_model_store(config.storage) as store:
        info, data = await store.get_model(game.env_id, version, max_bytes=config.storage.max_model_bytes)
    return OnnxEvaluator.from_bytes(data, game, version=info.version, threads=config.actor.onnx_threads)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("cartridge arena", __doc__.splitlines()[0])
    parser.add_argument("--model", default="latest", help="'latest', a version number, an ONNX file, or 'uniform'")
    parser.add_argument("--opponent", default="random", help="'random', 'one-ply', or an ONNX file")
    parser.add_argument("--games", type=int, default=100)
    parser.add_argument("--sims", type=int, default=200, help="model simulations per move")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = load_command_config(parser, args)
    game = get_game(config.common.env_id)
    rng = np.random.default_rng(args.seed)
    try:
        evaluator = asyncio.run(load_model(config, game, args.model))
        if args.opponent == "random":
            opponent = random_player(game, rng)
        elif args.opponent == "one-ply":
            opponent = one_ply_player(game, rng)
        else:
            other = asyncio.run(load_model(config, game, args.opponent))
            opponent = search_player(game, other, args.sims, config.mcts)
    except (OSError, ValueError, LookupError, ModelError) as exc:
        print(f"cartridge arena: {exc}", file=sys.stderr)
        return 2
    score = play_match(game, search_player(game, evaluator, args.sims, config.mcts), opponent, args.games)
    print(f"model {args.model} (version {evaluator.version}, {args.sims} sims) vs {args.opponent}: "
          f"{score['wins']} wins, {score['draws']} draws, {score['losses']} losses of {args.games}")
    print(json.dumps({"model_version": evaluator.version, "opponent": args.opponent, "sims": args.sims, **score}))
    return 0
