"""Learning speed: how strong a model N minutes of `cartridge up` make on this machine.

Runs `cartridge up --minutes N` (default 60) in a fresh directory, exactly as a user
would (the repository's config.toml plus any `--set`), and follows its progress line:
every 10 s one row of the curve (minutes, positions stored, training step, newest model,
the newest rating and accuracy the evaluator announced) goes to `curve.jsonl` in the run
directory as it comes, so a run cut short still leaves its figures. Afterwards:
- the newest model is rated if the evaluator had not finished it (same evaluator code);
- the per-version curve from the evaluator's results (`cartridge ratings`), each version
  placed at its publish time with the positions and steps stored by then;
- the newest model is scored on *every* labelled position per stage (the evaluator
  searches a subset), with search (`eval.simulations`, no noise) and with the raw policy.
Last line: one JSON object with `optimal_pct` and `policy_optimal_pct` (each
`{"early", "mid", "late"}`, all positions), `keeps_pct` and `policy_keeps_pct` (the
move keeps a win a win and a draw a draw, over won and drawn positions: the rest of an
optimal miss is a slower win or a faster loss), `rating` and `rating_error` (the newest
model's, Elo above random), `rating_gain` (newest minus first rated version, with the error
of the difference), `positions`, `steps`, `versions`, `minutes`, `model` (the
newest ONNX file: score it on a position set of your own with `cartridge analyze`),
`run_dir`, `host` (this machine's speed, measured just before the run: training steps/s
and network evaluations/s of the configured network, one thread each; runs on different
hosts differ by it as much as by most levers) and `vs_reference`: the scored model's
Elo, with one standard error either side, in 200 games (50 simulations, the same 100
four-ply openings each time) against a fixed model committed with the benchmark
(`bench/reference/<env_id>.onnx`, see its README): unlike the rating (± about 240, mostly
the anchor ladder's), it is known to about ± 25 and means the same on every host and in
every session, so hours measured apart can be set side by side.

    .venv/bin/python bench/learning.py [--minutes 60] [--actors 2] [--set section.key=value ...]
    .venv/bin/python bench/learning.py --rescore --dir runs/learning-...   # score a finished run again
    .venv/bin/python bench/learning.py --rescore --at 30 --dir runs/learning-...   # its model of minute 30
    .venv/bin/python bench/learning.py --rescore --reference none --dir ...   # no reference match
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cartridge.arena import load_model, play_match  # noqa: E402
from cartridge.ratings import format_table, rating_rows  # noqa: E402
from cartridge.up import EMBEDDED  # noqa: E402
from services.evaluator.measure import measure  # noqa: E402
from services.evaluator.service import EvaluatorService, fit, stored_records, version_name  # noqa: E402
from shared.bus import MemoryBus  # noqa: E402
from shared.evaluations import open_evaluations  # noqa: E402
from shared.config import Config, load_config, parse_overrides  # noqa: E402
from shared.games import Game, get_game  # noqa: E402
from shared.inference import Evaluator, ModelError, OnnxEvaluator  # noqa: E402
from shared.model_store import open_model_store  # noqa: E402
from shared.model_store.base import model_key  # noqa: E402
from shared.players import search_player  # noqa: E402

STAGES = ("early", "mid", "late")
REFERENCES = ROOT / "bench" / "reference"
# The reference match: as `cartridge arena --games 200 --sims 50 --opening-plies 4`.
REFERENCE_GAMES, REFERENCE_SIMS, REFERENCE_PLIES = 200, 50, 4
PROGRESS = re.compile(r"replay (\d+) positions \| step (\d+), .*\| model v(\d+) \|")
RATED = re.compile(r"v(\d+) rated (-?\d+) ± (\d+), optimal (\S+)/(\S+)/(\S+) %")


def follow(proc: subprocess.Popen, log_path: Path, curve_path: Path, started: float) -> list[dict]:
    """Copy `cartridge up`'s output to its log; one curve row per progress line."""
    curve = []
    with open(log_path, "w") as log, open(curve_path, "w") as out:
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if not (m := PROGRESS.search(line)):
                continue
            row = {"minutes": round((time.time() - started) / 60, 2), "positions": int(m[1]), "steps": int(m[2]),
                   "version": int(m[3])}
            if r := RATED.search(line):
                row |= {"rated_version": int(r[1]), "rating": int(r[2]), "rating_error": int(r[3]),
                        "optimal_pct": dict(zip(STAGES, (float(x) for x in r.group(4, 5, 6))))}
            curve.append(row)
            out.write(json.dumps(row) + "\n")
            out.flush()
            print(json.dumps(row), flush=True)
    return curve


async def gain_over_run(config: Config, upto: int) -> dict | None:
    """The rating of the newest rated version up to `upto` minus the first's, with the
    error of the difference (the two share the anchors' uncertainty, so it is much smaller)."""
    env = config.common.env_id
    async with open_evaluations(config.storage) as results:
        rated = [e.version for e in await results.evaluations(env) if e.status == "ok" and e.version <= upto]
        ratings = fit(await stored_records(results, env, 1), config.eval.prior_draws)  # every version
    if len(rated) < 2:
        return None
    gap = ratings.gap(version_name(max(rated)), version_name(min(rated)))
    return {"from": min(rated), "to": max(rated), "elo": round(gap.rating, 1), "error": round(gap.stderr, 1)}


async def rate_newest(config: Config) -> int:
    """Evaluate the newest stored version if the evaluator had not (the run may end
    mid-evaluation); its number."""
    service = EvaluatorService(config, bus=MemoryBus())
    async with service.bus, service.store, service.results:
        waiting = await service.waiting()
        async with open_model_store(config.storage) as store:
            newest = max(await store.list_versions(config.common.env_id), default=0)
        if newest and newest in waiting:
            await service.evaluate(newest, asyncio.Event())
    return newest


def first_seen(curve: list[dict]) -> dict[int, float]:
    """Minute each version was first served, from the trainer's progress lines: known for
    every version, also those the evaluator skipped (their rating rows have no time)."""
    seen: dict[int, float] = {}
    for r in curve:
        seen.setdefault(r["version"], r["minutes"])
    seen.pop(0, None)
    return seen


def at(curve: list[dict], minutes: float) -> dict:
    """The curve row last seen at `minutes` (positions and steps stored by then)."""
    seen = [r for r in curve if r["minutes"] <= minutes]
    return seen[-1] if seen else {"positions": 0, "steps": 0}


def host_speed(config: Config, game: Game) -> dict:
    """Training steps/s (batch `training.batch_size`) and evaluations/s (batches of 64
    through onnxruntime) of the configured network, one thread each: a yardstick that lets
    runs made on different machines be compared."""
    import torch

    from bench.train_rate import random_batch, train_rate
    from services.trainer.export import export_onnx
    from services.trainer.network import build_network
    from shared.inference import OnnxEvaluator

    torch.set_num_threads(1)
    net = build_network(game, config.network)
    batch = random_batch(game, config.training.batch_size)
    train_steps_per_s = train_rate(net, torch.optim.Adam(net.parameters()), batch, steps=20)
    evaluator = OnnxEvaluator.from_bytes(export_onnx(net), game, version=1)
    obs = batch.observation[:64]
    evaluator(obs)
    started, calls = time.perf_counter(), 100
    for _ in range(calls):
        evaluator(obs)
    return {"train_steps_per_s": round(train_steps_per_s, 2),
            "evals_per_s": round(calls * len(obs) / (time.perf_counter() - started))}


def versus_reference(game: Game, evaluator: Evaluator, config: Config, reference: Path,
                     games: int = REFERENCE_GAMES) -> dict:
    """`evaluator` (searching with `config`'s `[mcts]`) against the reference model
    (searching with the default `[mcts]`): its Elo and the range one standard error of
    the score either side gives."""
    other = load_reference(reference, game)
    defaults = load_config(defaults=EMBEDDED)
    summary = play_match(game, search_player(game, evaluator, REFERENCE_SIMS, config.mcts),
                         search_player(game, other, REFERENCE_SIMS, defaults.mcts), games, REFERENCE_PLIES)
    return {"reference": reference.name, "games": games, "sims": REFERENCE_SIMS, **summary}


def load_reference(path: Path, game: Game) -> OnnxEvaluator:
    """The reference model; a file that is no model for `game` ends the benchmark with its name."""
    try:
        return OnnxEvaluator.from_bytes(path.read_bytes(), game, version=0)
    except ModelError as exc:
        sys.exit(f"learning: reference model {path}: {exc}")


def reference_path(choice: str | None, env_id: str) -> Path | None:
    """`--reference`: a file, `none`, or (unset) the committed reference for the game if
    there is one."""
    if choice == "none":
        return None
    if not choice:
        committed = REFERENCES / f"{env_id}.onnx"
        return committed if committed.is_file() else None
    path = Path(choice).resolve()
    if not path.is_file():
        sys.exit(f"learning: no reference model {path} (an ONNX file, or 'none')")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(run_dir: Path, args: argparse.Namespace, config: Config, game: Game) -> tuple[float, list[dict], dict]:
    """`cartridge up --minutes N` in `run_dir`, followed; its start time, curve and the
    host's speed."""
    if run_dir.exists() and any(run_dir.iterdir()):
        sys.exit(f"learning: {run_dir} is not empty (a learning run starts from nothing)")
    run_dir.mkdir(parents=True, exist_ok=True)
    sets = [x for s in args.set for x in ("--set", s)]
    print(f"learning: {args.minutes:g} minutes of cartridge up in {run_dir}", flush=True)

    host = host_speed(config, game)
    print(f"learning: this host trains {host['train_steps_per_s']} steps/s and evaluates "
          f"{host['evals_per_s']} positions/s (one thread each)", flush=True)
    started = time.time()
    (run_dir / "run.json").write_text(json.dumps({"started": started, "minutes": args.minutes, "set": args.set,
                                                  "host": host}))
    # Its web page on a free port (runs side by side must not collide); a --set of web.port wins.
    web = ["--set", f"web.port={free_port()}"]
    proc = subprocess.Popen([sys.executable, "-m", "cartridge.cli", "up", "--minutes", str(args.minutes),
                             "--actors", str(args.actors), *web, *sets],
                            cwd=run_dir, env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    curve = follow(proc, run_dir / "up.log", run_dir / "curve.jsonl", started)
    if proc.wait() != 0:  # what it stored is on disk: score it all the same
        print(f"learning: cartridge up exited with {proc.returncode} (see {run_dir / 'up.log'}); "
              "scoring what it stored", file=sys.stderr, flush=True)
    return started, curve, host


def recorded(run_dir: Path) -> tuple[float, list[dict], float, dict | None]:
    """A finished run's start time, curve, minutes and host speed, from its directory."""
    try:
        curve = [json.loads(line) for line in (run_dir / "curve.jsonl").read_text().splitlines()]
    except FileNotFoundError:
        sys.exit(f"learning: {run_dir} holds no curve.jsonl: not a learning run's directory")
    if (run_dir / "run.json").exists():
        meta = json.loads((run_dir / "run.json").read_text())
        return meta["started"], curve, meta["minutes"], meta.get("host")
    # Runs from before run.json: the first log line's time (local), the curve's length.
    first = (run_dir / "up.log").read_text().split(",", 1)[0]
    return (time.mktime(time.strptime(first, "%Y-%m-%d %H:%M:%S")), curve,
            round(curve[-1]["minutes"] if curve else 0), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--actors", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--dir", help="run directory (default: runs/learning-<time> here); must be new or empty")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--rescore", action="store_true",
                        help="do not run: score the run already in --dir again (after a crash or a change of yardstick)")
    parser.add_argument("--at", type=float, metavar="MINUTES",
                        help="score the newest model published by this minute of the run instead of the run's "
                             "newest (with --rescore: an hour's run gives its 30-minute figures too)")
    parser.add_argument("--reference", metavar="ONNX|none",
                        help="model the scored one plays 200 games against (default: bench/reference/<env_id>.onnx)")
    args = parser.parse_args()
    config = load_config(defaults=EMBEDDED, overrides=parse_overrides(args.set))
    game = get_game(config.common.env_id)
    reference = reference_path(args.reference, game.env_id)
    if reference:
        load_reference(reference, game)  # a wrong path or a file that is no model fails now, not after the hour
    if args.rescore:
        if not args.dir:
            sys.exit("learning: --rescore needs --dir (the run to score)")
        run_dir = Path(args.dir).resolve()
        started, curve, args.minutes, host = recorded(run_dir)
    else:
        run_dir = Path(args.dir or f"runs/learning-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
        started, curve, host = run(run_dir, args, config, game)
    os.chdir(run_dir)  # the embedded back ends' paths are relative to the run directory
    newest = asyncio.run(rate_newest(config))
    rows = asyncio.run(rating_rows(config))
    print(format_table(rows))
    # Minute each version was published: the rated ones' own time, else when the trainer first served it.
    published = first_seen(curve) | {r["version"]: (r["published_at"] - started) / 60
                                     for r in rows if r["published_at"]}
    versions = []
    for r in rows:
        minutes = published.get(r["version"])
        stored = at(curve, minutes) if minutes is not None else {}
        versions.append({"version": r["version"], "minutes": round(minutes, 1) if minutes else None,
                         "positions": stored.get("positions"), "steps": r["step"], "rating": r["rating"],
                         "rating_error": r["rating_error"], "optimal_pct": r["optimal_pct"],
                         "policy_optimal_pct": r["policy_optimal_pct"]})
    (run_dir / "versions.json").write_text(json.dumps(versions, indent=1))

    minutes, scored = args.minutes, newest
    if args.at is not None:
        minutes = args.at
        by_then = [v for v, m in published.items() if m <= minutes]
        if not by_then:
            sys.exit(f"learning: no model was published by minute {minutes:g} of {run_dir}")
        scored = max(by_then)
        print(f"learning: scoring model {scored}, the newest published by minute {minutes:g}")
    every = {"positions": 1 << 30}  # all labelled positions, for the final figures
    evaluator = asyncio.run(load_model(config, game, str(scored) if scored else "latest"))
    accuracy = measure(game, evaluator, msgspec.structs.replace(config.eval, **every), config.mcts)
    last = next((v for v in reversed(versions) if v["version"] == scored), {})
    end = at(curve, minutes if args.at is not None else float("inf"))  # the run's last row unless --at
    model = run_dir / config.storage.local_model_dir / model_key(game.env_id, scored) if scored else None
    vs_reference = None
    if reference:
        print(f"learning: model {scored} plays {REFERENCE_GAMES} games against {reference}", flush=True)
        vs_reference = versus_reference(game, evaluator, config, reference)
    print(json.dumps({
        "minutes": minutes, "optimal_pct": accuracy.optimal_pct("search"),
        "policy_optimal_pct": accuracy.optimal_pct("policy"), "keeps_pct": accuracy.keeps_pct("search"),
        "policy_keeps_pct": accuracy.keeps_pct("policy"), "rating": last.get("rating"),
        "rating_error": last.get("rating_error"), "rating_gain": asyncio.run(gain_over_run(config, scored)),
        "positions": end["positions"], "steps": end["steps"],
        "versions": scored, "model": str(model) if model else None, "run_dir": str(run_dir), "host": host,
        "vs_reference": vs_reference,
    }))


if __name__ == "__main__":
    main()
