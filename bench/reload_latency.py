"""Hot-reload latency: from a model-published event to every actor serving the model.

Starts an S3 server (moto) on loopback and 8 actor processes (`python -m services.actor`,
self-playing Connect4 the whole time) on the real RabbitMQ. Nothing consumes their games,
as when ingest falls behind: the first event goes out once the transitions queue is full
at its bound (`--backlog-mb`) and actors are being refused, then a sequence of model
versions is published the way the trainer does (upload, then event). Each actor logs
`Model updated to version N (..., X ms after the event, arrived after Y ms; download D ms,
load L ms)` once the new onnxruntime session is swapped in; this collects them for every
actor and version. Last line: a JSON object with `first_event_max_ms` (the slowest actor
to serve version 1, the event sent into the flood), `p50_ms` and `p99_ms` over all.

    python bench/reload_latency.py [--actors 8] [--versions 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import sys
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.trainer.export import export_onnx  # noqa: E402
from services.trainer.network import build_network  # noqa: E402
from shared.bus import RabbitBus  # noqa: E402
from shared.config import NetworkConfig, load_config  # noqa: E402
from shared.games import get_game  # noqa: E402
from shared.messages import ModelPublished, encode_event  # noqa: E402
from shared.model_store import S3ModelStore  # noqa: E402

UPDATED = re.compile(r"Model updated to version (\d+) \(model published, (\d+) ms after the event, "
                     r"arrived after (\d+) ms; download (\d+) ms, load (\d+) ms\)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, default=8)
    parser.add_argument("--versions", type=int, default=20)
    parser.add_argument("--games", type=int, default=64, help="games in parallel per actor")
    parser.add_argument("--backlog-mb", type=float, default=8,
                        help="bound of the transitions queue (broker.max_backlog_bytes), filled before the first event")
    args = parser.parse_args()

    # The S3 server in a process of its own, as MinIO would be.
    port = free_port()
    s3 = await asyncio.create_subprocess_exec(
        Path(sys.executable).with_name("moto_server"), "-H", "127.0.0.1", "-p", str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    await asyncio.sleep(2)
    run = uuid.uuid4().hex[:8]
    env = {
        "CARTRIDGE_STORAGE_S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "CARTRIDGE_STORAGE_S3_BUCKET": f"bench-reload-{run}",
        "CARTRIDGE_STORAGE_S3_ACCESS_KEY": "bench", "CARTRIDGE_STORAGE_S3_SECRET_KEY": "bench",
        "CARTRIDGE_BROKER_TRANSITIONS_QUEUE": f"bench.{run}.transitions",
        "CARTRIDGE_BROKER_DEAD_LETTER_EXCHANGE": f"bench.{run}.dead",
        "CARTRIDGE_BROKER_DEAD_LETTER_QUEUE": f"bench.{run}.dead",
        "CARTRIDGE_BROKER_MODELS_EXCHANGE": f"bench.{run}.models",
        "CARTRIDGE_BROKER_MAX_BACKLOG_BYTES": str(int(args.backlog_mb * 2**20)),
        "CARTRIDGE_ACTOR_PARALLEL_GAMES": str(args.games),
    }
    config = load_config(environ=env)
    game = get_game(config.common.env_id)
    models = []
    for seed in range(3):  # distinct weights, cycled through the versions
        import torch

        torch.manual_seed(seed)
        models.append(export_onnx(build_network(game, NetworkConfig())))

    latencies: dict[int, list[int]] = {}
    parts: list[tuple[int, int, int, int]] = []  # (version, arrival ms, download ms, load ms)
    sent: dict[int, tuple[float, int]] = {}  # version -> (publish confirmed after ms, transitions queued)
    seen = asyncio.Condition()

    playing = 0
    refused: set[int] = set()  # actors the full queue has refused

    async def watch(index: int, proc) -> None:
        nonlocal playing
        async for line in proc.stderr:
            text = line.decode(errors="replace")
            if "lost room in the transitions backlog" in text:
                async with seen:
                    refused.add(index)
                    seen.notify_all()
            if " playing " in text:
                async with seen:
                    playing += 1
                    seen.notify_all()
            match = UPDATED.search(text)
            if match:
                async with seen:
                    latencies.setdefault(int(match[1]), []).append(int(match[2]))
                    parts.append((int(match[1]), int(match[3]), int(match[4]), int(match[5])))
                    seen.notify_all()

    async with S3ModelStore(config.storage) as store, RabbitBus(config.broker, name="bench") as bus:
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.actor", "--actor-id", f"bench-{i}",
                cwd=ROOT, env={**os.environ, **env}, stderr=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL)
            for i in range(args.actors)
        ]
        watchers = [asyncio.create_task(watch(i, p)) for i, p in enumerate(procs)]
        try:
            # Measure running actors: wait until each has subscribed and plays, then
            # let start-up work (imports, first search steps) settle.
            started = time.perf_counter()
            async with seen:
                await asyncio.wait_for(seen.wait_for(lambda: playing == args.actors), 300)
            print(f"{args.actors} actors playing after {time.perf_counter() - started:.1f} s", flush=True)
            # The first event goes out into a flood: actors publishing uniform-search games
            # as fast as they play them, nobody consuming (as when ingest falls behind),
            # until the queue is at its bound and has refused every actor.
            async with seen:
                await asyncio.wait_for(seen.wait_for(lambda: len(refused) == args.actors), 600)
            print(f"transitions queue full: {await bus.pending_transitions()} messages, every actor refused, "
                  f"after {time.perf_counter() - started:.1f} s", flush=True)
            for version in range(1, args.versions + 1):
                info = await store.put_model(game.env_id, version, models[version % len(models)], step=version)
                backlog = await bus.pending_transitions()
                event = ModelPublished(env_id=info.env_id, version=version, key=info.key, sha256=info.sha256,
                                       size=info.size)
                await bus.publish_event(encode_event(event))
                sent[version] = (1000 * (time.time() - event.published_at), backlog)
                async with seen:
                    await asyncio.wait_for(
                        seen.wait_for(lambda: len(latencies.get(version, [])) == args.actors), 60)
                await asyncio.sleep(0.5)
        finally:
            for p in procs:
                p.terminate()
            await asyncio.gather(*(p.wait() for p in procs))
            for w in watchers:
                w.cancel()
            channel = await bus._confirming_channel()
            await channel.queue_delete(config.broker.transitions_queue)
            await channel.queue_delete(config.broker.dead_letter_queue)
            await channel.exchange_delete(config.broker.dead_letter_exchange)
            await channel.exchange_delete(config.broker.models_exchange)
    s3.terminate()
    await s3.wait()

    samples = np.array([ms for v in latencies.values() for ms in v])
    first = np.array(latencies[1])
    result = {
        "actors": args.actors, "versions": args.versions, "samples": int(len(samples)),
        "first_event_max_ms": int(first.max()),
        "p50_ms": float(np.percentile(samples, 50)), "p99_ms": float(np.percentile(samples, 99)),
        "max_ms": int(samples.max()), "mean_ms": round(float(samples.mean()), 1),
        "arrival_p50_ms": float(np.percentile([a for _, a, _, _ in parts], 50)),
        "arrival_max_ms": int(max(a for _, a, _, _ in parts)),
        "download_p50_ms": float(np.percentile([d for _, _, d, _ in parts], 50)),
        "load_p50_ms": float(np.percentile([l for _, _, _, l in parts], 50)),
        # The first event's parts, slowest actor per part: what the first reload costs extra.
        "first_event_max_parts_ms": {name: int(max(p[i] for p in parts if p[0] == 1))
                                     for i, name in ((1, "arrival"), (2, "download"), (3, "load"))},
        "backlog_at_first_event": sent[1][1],
    }
    for version, ms in sorted(latencies.items()):
        confirm_ms, backlog = sent[version]
        print(f"version {version}: " + " ".join(f"{m:4d}" for m in sorted(ms))
              + f" ms (publish confirmed after {confirm_ms:.0f} ms, {backlog} messages queued)")
    print(f"first event: every actor served it within {result['first_event_max_ms']} ms")
    print(f"{len(samples)} reloads across {args.actors} actors: p50 {result['p50_ms']:.0f} ms, "
          f"p99 {result['p99_ms']:.0f} ms, max {result['max_ms']} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
