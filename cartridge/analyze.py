"""`cartridge analyze`: what a model thinks of given positions.

One output line per input position:
`position<TAB>column 1-7<TAB>value<TAB>7 probabilities` (raw policy with `--sims 0`,
else the search's visit distribution; value from the side to move's view).
A line that cannot be analysed prints `position<TAB>error: why` and the rest go on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from shared.config import MCTSConfig
from shared.games import Game, IllegalMove, get_game
from shared.inference import Evaluator, ModelError, OnnxEvaluator, UniformEvaluator
from shared.search.analysis import search_positions
from shared.service import base_parser, load_command_config

CHUNK = 256  # positions searched together


def analyze_lines(game: Game, evaluator: Evaluator, lines: list[str], sims: int, mcts: MCTSConfig) -> list[str]:
    out: list[str | None] = []
    good: list[tuple[int, str, np.ndarray]] = []
    for raw in lines:
        text = raw.split(maxsplit=1)[0] if raw.strip() else ""
        if not text or text.startswith("#"):
            continue
        try:
            board, done, _ = game.position(text)
            if done:
                raise IllegalMove(f"position {text!r} is already finished")
        except IllegalMove as exc:
            out.append(f"{text}\terror: {exc}")
            continue
        good.append((len(out), text, board))
        out.append(None)
    for start in range(0, len(good), CHUNK):
        chunk = good[start:start + CHUNK]
        policy, value = search_positions(game, evaluator, np.stack([b for _, _, b in chunk]), sims, mcts)
        for (i, text, _), p, v in zip(chunk, policy, value):
            probs = "\t".join(f"{x:.4f}" for x in p)
            out[i] = f"{text}\t{int(np.argmax(p)) + 1}\t{v:+.4f}\t{probs}"
    return out  # type: ignore[return-value]


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("cartridge analyze", __doc__.splitlines()[0])
    parser.add_argument("positions", help="file of move strings, one per line ('-' for stdin)")
    parser.add_argument("--model", help="ONNX model file (default: uniform, no model)")
    parser.add_argument("--sims", type=int, default=0, help="simulations per position (0: raw policy)")
    args = parser.parse_args(argv)
    if args.sims < 0:
        parser.error("--sims must be 0 or more")
    config = load_command_config(parser, args)
    game = get_game(config.common.env_id)
    try:
        evaluator: Evaluator = (
            OnnxEvaluator.from_bytes(Path(args.model).read_bytes(), game, version=1, threads=config.actor.onnx_threads)
            if args.model else UniformEvaluator(game)
        )
    except (OSError, ModelError) as exc:
        print(f"cartridge analyze: {exc}", file=sys.stderr)
        return 2
    try:
        lines = (sys.stdin if args.positions == "-" else open(args.positions)).read().splitlines()
    except OSError as exc:
        print(f"cartridge analyze: {exc}", file=sys.stderr)
        return 2
    for line in analyze_lines(game, evaluator, lines, args.sims, config.mcts):
        print(line)
    return 0
