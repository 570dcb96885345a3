"""What the evaluator's pieces cost on this machine (a measurement, not a test).

1. Alpha-beta per depth: ms per move over the solver-labelled Connect4 positions
   (`shared.games.labelled`) and over its own games (random 2-ply openings, colours
   swapped), and its optimal / keeps % per stage.
2. Rating games: wall and CPU time of `--games` games of each anchor pairing, of a
   model (untrained `--blocks`x`--channels` net, `--sims` simulations) against
   alphabeta-4, and of the model against five anchors at once (`--games` each).
Last line: a JSON object with every figure.

    .venv/bin/python bench/evaluator_cost.py [--depths 7] [--games 20]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.evaluator.accuracy import score_moves  # noqa: E402
from services.evaluator.alphabeta import AlphaBeta  # noqa: E402
from services.evaluator.match import anchor_player, model_player, play_against, play_games  # noqa: E402
from shared.config import MCTSConfig  # noqa: E402
from shared.games import get_game  # noqa: E402
from shared.games.labelled import STAGES, load_labelled  # noqa: E402

C4 = get_game("connect4")


def load_positions() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The package's solver-labelled Connect4 positions as (boards, values) per stage."""
    return {stage: (p.boards, p.values) for stage in STAGES for p in [load_labelled(stage)]}


def time_alphabeta(depth: int, boards: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Chosen moves, mean and max ms per move."""
    search = AlphaBeta(C4)
    moves, times = [], []
    for mine, occupied in search.bitboards(boards):
        start = time.perf_counter()
        moves.append(search.best_moves(mine, occupied, depth)[0][0])
        times.append(time.perf_counter() - start)
    return np.array(moves), 1000 * float(np.mean(times)), 1000 * float(np.max(times))


def time_games(player_a, player_b, games: int, seed: int = 0) -> dict:
    start, cpu = time.perf_counter(), time.process_time()
    records = play_games(C4, player_a, player_b, games // 2, seed=seed)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    plies = sum(len(r.moves) for r in records)
    return {"seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "games": len(records), "plies": plies,
            "score_a": sum(r.score_a for r in records)}


class CountingEvaluator:
    """Counts the positions a model evaluates."""

    def __init__(self, evaluator):
        self.evaluator, self.version, self.count = evaluator, evaluator.version, 0

    def __call__(self, obs):
        self.count += len(obs)
        return self.evaluator(obs)

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


def untrained_model(blocks: int, channels: int):
    import torch

    from services.trainer.export import export_onnx
    from services.trainer.network import PolicyValueNet
    from shared.inference import OnnxEvaluator

    torch.manual_seed(0)
    net = PolicyValueNet(C4.obs_shape, C4.num_actions, blocks=blocks, channels=channels)
    return OnnxEvaluator.from_bytes(export_onnx(net), C4, version=1, threads=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, default=7, help="alpha-beta depths 1..N")
    parser.add_argument("--games", type=int, default=20, help="games per pairing (even)")
    parser.add_argument("--sims", type=int, default=200)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--channels", type=int, default=64)
    args = parser.parse_args()
    out: dict = {"alphabeta": {}, "games": {}}

    sets = load_positions()
    for depth in range(1, args.depths + 1):
        row: dict = {}
        per_move = []
        for stage, (boards, values) in sets.items():
            moves, mean_ms, max_ms = time_alphabeta(depth, boards)
            s = score_moves(values, moves)
            row[stage] = {"optimal_pct": round(s.optimal_pct, 1), "keeps_pct": round(s.keeps_pct, 1)}
            per_move.append((mean_ms, max_ms))
        row["labelled_ms_per_move"] = round(float(np.mean([m for m, _ in per_move])), 2)
        row["labelled_max_ms"] = round(max(x for _, x in per_move), 1)
        name = f"alphabeta-{depth}"
        games = time_games(anchor_player(C4, name), anchor_player(C4, name), 10)
        row["selfplay_ms_per_move"] = round(1000 * games["seconds"] / games["plies"], 2)
        out["alphabeta"][name] = row
        print(name, row, flush=True)

    pairings = [("one-ply", "random"), ("alphabeta-2", "one-ply"), ("alphabeta-4", "alphabeta-2"),
                ("alphabeta-6", "alphabeta-4")]
    for a, b in pairings:
        result = time_games(anchor_player(C4, a, seed=1), anchor_player(C4, b, seed=2), args.games)
        out["games"][f"{a} vs {b}"] = result
        print(a, "vs", b, result, flush=True)

    evaluator = CountingEvaluator(untrained_model(args.blocks, args.channels))
    model = model_player(C4, evaluator, args.sims, MCTSConfig())
    name = f"model {args.blocks}x{args.channels} {args.sims} sims"
    result = time_games(model, anchor_player(C4, "alphabeta-4"), args.games)
    out["games"][f"{name} vs alphabeta-4"] = {**result, "evaluations": evaluator.take()}
    print(name, "vs alphabeta-4", out["games"][f"{name} vs alphabeta-4"], flush=True)
    # Every anchor at once: one batched search per model move for all their games.
    anchors = ["random", "one-ply", "alphabeta-2", "alphabeta-4", "alphabeta-6"]
    start, cpu = time.perf_counter(), time.process_time()
    by_anchor = play_against(C4, model, [anchor_player(C4, a, seed=2) for a in anchors], args.games // 2)
    out["games"][f"{name} vs {len(anchors)} anchors at once"] = row = {
        "seconds": round(time.perf_counter() - start, 2), "cpu_seconds": round(time.process_time() - cpu, 2),
        "games": sum(len(r) for r in by_anchor), "evaluations": evaluator.take(),
        "score_a": {a: sum(r.score_a for r in records) for a, records in zip(anchors, by_anchor)},
    }
    print(name, "vs anchors at once", row, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
