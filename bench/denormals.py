"""Training speed with the subnormal weights an hour of training leaves, flushed or not.

Weight decay pulls weights that stop learning down into the subnormal floats, where the
CPU computes far slower: at step 12,000 of the default config's hour the last residual
block held 1,306 subnormal weights (1.8 % of its 73,728 convolution weights) and the
trainer ran 1.7 steps/s instead of 4. This plants the same share (`--fraction`) in the
last residual block of the configured network, at random places, and trains it with a
learning rate of 0 so that they stay, as an hour's training kept them. Then measures
training steps/s (`training.batch_size`, one torch thread):
- clean: the network without them, in a plain thread (the yardstick);
- baseline: with them, in a plain thread that keeps subnormals (the trainer before);
- flushed: with them, in the trainer's torch thread (`services/trainer/torch_thread.py`).
Last line: a JSON object, with the ratio of flushed to baseline.

    .venv/bin/python bench/denormals.py [--fraction 0.0177] [--steps 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.train_rate import random_batch, train_rate  # noqa: E402
from services.trainer.network import build_network  # noqa: E402
from services.trainer.torch_thread import TorchThread  # noqa: E402
from shared.config import load_config  # noqa: E402
from shared.games import get_game  # noqa: E402

GAME = get_game("connect4")
ROUNDS = 3
SUBNORMAL = 1e-39


def steps_per_s(fraction: float, steps: int) -> float:
    """Median over `ROUNDS` of training steps/s in the calling thread."""
    config = load_config()
    torch.manual_seed(0)
    net = build_network(GAME, config.network)
    if fraction:
        last_block = net.tower[-1]
        picks = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for conv in (last_block.conv1, last_block.conv2):
                conv.weight[torch.rand(conv.weight.shape, generator=picks) < fraction] = SUBNORMAL
    optimizer = torch.optim.Adam(net.parameters(), lr=0.0, weight_decay=config.training.weight_decay)
    batch = random_batch(GAME, config.training.batch_size)
    return round(statistics.median(train_rate(net, optimizer, batch, steps) for _ in range(ROUNDS)), 2)


def in_plain_thread(fraction: float, steps: int) -> float:
    """In a new thread that keeps subnormals, as the trainer's worker threads did."""
    result = []

    def work():
        torch.set_flush_denormal(False)
        result.append(steps_per_s(fraction, steps))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return result[0]


async def in_torch_thread(fraction: float, steps: int) -> float:
    torch_thread = TorchThread()
    try:
        return await torch_thread.run(steps_per_s, fraction, steps)
    finally:
        torch_thread.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.0177,
                        help="share of the last residual block's convolution weights made subnormal")
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed round")
    args = parser.parse_args()
    torch.set_num_threads(1)
    clean = in_plain_thread(0.0, args.steps)
    baseline = in_plain_thread(args.fraction, args.steps)
    flushed = asyncio.run(in_torch_thread(args.fraction, args.steps))  # flushes this thread too: measured last
    print(f"denormals: {args.fraction:.2%} of the last block's weights subnormal, batch "
          f"{load_config().training.batch_size}, one torch thread")
    print(f"clean network: {clean} steps/s; with them, kept (baseline): {baseline} steps/s; "
          f"flushed (the trainer's torch thread): {flushed} steps/s")
    print(json.dumps({"fraction": args.fraction, "clean_steps_per_s": clean, "baseline_steps_per_s": baseline,
                      "flushed_steps_per_s": flushed, "ratio": round(flushed / baseline, 2)}))


if __name__ == "__main__":
    main()
