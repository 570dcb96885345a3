"""Self-play throughput against the raw speed of the network it calls.

Connect4, the default 4x64 network with random weights, one process, one onnxruntime
thread. In one run it measures raw onnxruntime evaluations/s at the search's batch size
(before and after the self-play phase, averaged, so machine noise hits both alike), then
self-play simulations/s. `ratio = sims_per_s / raw_evals_per_s`: 1.0 would mean tree
search costs nothing on top of the network. Last line: a JSON object.

    python bench/selfplay.py [--games 256] [--seconds 60] [--sims 200] [--cache-positions N] [--metrics]

`--cache-positions N` puts an evaluation cache of N positions in front of the network
(`actor.eval_cache_positions`): the ratio may then pass 1, and `cache_saved` says which
fraction of the search's evaluations the cache answered.

`--metrics` adds what metrics cost an actor of `cartridge up`, from a thread as the
actor's event loop would: its status snapshot copied into prometheus_client's
multiprocess files every second, and the whole directory collected into one scrape
every `SCRAPE_EVERY_S` (the parent's work, on the same two cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.actor.selfplay import SelfPlay  # noqa: E402
from services.trainer.export import export_onnx  # noqa: E402
from services.trainer.network import build_network  # noqa: E402
from shared.config import MCTSConfig, NetworkConfig  # noqa: E402
from shared.games import get_game  # noqa: E402
from shared.inference import OnnxEvaluator  # noqa: E402


def raw_evals_per_s(evaluator, obs: np.ndarray, seconds: float) -> float:
    evaluator(obs)  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        evaluator(obs)
        n += len(obs)
    return n / (time.perf_counter() - start)


SCRAPE_EVERY_S = 5.0


def record_metrics(selfplay: SelfPlay, done: threading.Event, scrapes: list[int]) -> None:
    """What metrics cost: the actor's once-a-second snapshot sync, and scrapes."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    from shared.metrics.export import StatusExport
    from shared.metrics.families import recorder
    from shared.status import ActorStatus

    export, registry = StatusExport(recorder()), CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    last_scrape = time.monotonic()
    while not done.wait(1.0):
        s = selfplay.stats
        export.apply(ActorStatus(name="bench", state="running", games=s.games, positions=s.positions,
                                 simulations=s.simulations, evaluations=s.evaluations, model_version=1,
                                 published_positions=s.positions, unconfirmed=0, publish_retries=0,
                                 reload_latency_ms=None))
        if time.monotonic() - last_scrape >= SCRAPE_EVERY_S:
            scrapes.append(len(generate_latest(registry)))
            last_scrape = time.monotonic()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", type=int, default=256, help="games searched together")
    parser.add_argument("--seconds", type=float, default=60, help="self-play duration")
    parser.add_argument("--sims", type=int, default=200, help="simulations per move")
    parser.add_argument("--raw-seconds", type=float, default=10, help="each raw-ORT phase")
    parser.add_argument("--metrics", action="store_true", help="record and scrape metrics meanwhile")
    parser.add_argument("--cache-positions", type=int, default=0, help="evaluation cache size (0: none)")
    args = parser.parse_args()
    if args.metrics:  # before anything imports prometheus_client, as `cartridge up` does
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-metrics-")

    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    game = get_game("connect4")
    net = build_network(game, NetworkConfig())
    evaluator = OnnxEvaluator.from_bytes(export_onnx(net), game, version=1, threads=1)
    config = MCTSConfig(num_simulations=args.sims)

    # Realistic inputs for the raw phase: positions from a few random plies.
    rng = np.random.default_rng(0)
    boards = game.initial_boards(args.games)
    for _ in range(8):
        legal = game.legal_mask(boards)
        boards, _, _ = game.play(boards, (rng.random(legal.shape) * legal).argmax(axis=1))
    obs = game.observe(boards)

    raw_before = raw_evals_per_s(evaluator, obs, args.raw_seconds)
    selfplay = SelfPlay(game, config, evaluator, num_games=args.games, seed=0, cache_positions=args.cache_positions)
    for _ in range(5):  # warm-up
        selfplay.step()
    s0, p0, g0 = selfplay.stats.simulations, selfplay.stats.positions, selfplay.stats.games
    e0, n0 = selfplay.stats.evaluations, selfplay.stats.evaluated
    done, scrapes = threading.Event(), []
    if args.metrics:
        threading.Thread(target=record_metrics, args=(selfplay, done, scrapes), daemon=True).start()
    start = time.perf_counter()
    steps = 0
    while time.perf_counter() - start < args.seconds:
        selfplay.step()
        steps += 1
    elapsed = time.perf_counter() - start
    done.set()
    raw_after = raw_evals_per_s(evaluator, obs, args.raw_seconds)

    sims = selfplay.stats.simulations - s0
    raw = (raw_before + raw_after) / 2
    result = {
        "games_in_parallel": args.games,
        "num_simulations": args.sims,
        "seconds": round(elapsed, 1),
        "steps": steps,
        "games_finished": selfplay.stats.games - g0,
        "positions_per_s": round((selfplay.stats.positions - p0) / elapsed, 1),
        "sims_per_s": round(sims / elapsed, 1),
        "raw_evals_per_s": round(raw, 1),
        "raw_evals_per_s_before": round(raw_before, 1),
        "raw_evals_per_s_after": round(raw_after, 1),
        "ratio": round(sims / elapsed / raw, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "metrics": args.metrics,
        "scrapes": len(scrapes),
        "cache_positions": args.cache_positions,
        "cache_saved": round(1 - (selfplay.stats.evaluated - n0) / max(selfplay.stats.evaluations - e0, 1), 3),
    }
    print(f"self-play: {result['positions_per_s']} positions/s, {result['sims_per_s']} sims/s "
          f"over {steps} steps; raw onnxruntime at batch {args.games}: {result['raw_evals_per_s']} evals/s")
    print(json.dumps(result))
    if args.metrics:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


if __name__ == "__main__":
    main()
