"""`cartridge status`: one screen for a running deployment, from the heartbeats every
service sends (so actors on other hosts are seen too) and RabbitMQ's management API.

Exit code 0 when every service seen in the last `status.lookback_s` seconds is up and
RabbitMQ answers; 1 when a service is down (silent for `status.missed_beats` heartbeats,
or stopped), an `--expect`ed service was never seen, or RabbitMQ or its management API
cannot be reached: usable from cron or a probe.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from shared.bus.management import queue_depths
from shared.config import Config, mask_url
from shared.heartbeat import read_recent
from shared.liveness import Instance, LiveView, evaluated, samples_per_position
from shared.retry import DependencyError
from shared.service import base_parser, load_command_config
from shared.status import ActorStatus, EvaluatorStatus, IngestStatus, TrainerStatus


def details(i: Instance) -> str:
    s = i.last
    if isinstance(s, TrainerStatus):
        loss = f"{s.loss:.3f}" if s.loss is not None else "-"
        spp = samples_per_position(s)
        return (f"step {s.step}, model v{s.version}, loss {loss}, replay {s.replay_size}, "
                f"samples per new position {'-' if spp is None else f'{spp:.1f}'}")
    if isinstance(s, IngestStatus):
        rate = i.rate("rows")
        return (f"{s.rows} positions stored{'' if rate is None else f', {rate:.0f}/s'}, "
                f"{s.dead_lettered} dead-lettered, {s.write_failures} write failures")
    if isinstance(s, EvaluatorStatus):
        rating = f"rating {s.rating:.0f} ± {s.rating_error:.0f}" if s.rating is not None else "not rated"
        return f"v{s.version} {rating}, {s.evaluated} evaluated, {s.failed} failed, {s.rollbacks} rollbacks"
    if isinstance(s, ActorStatus):
        rate = i.rate("positions")
        return (f"model v{s.model_version}, {s.games} games{'' if rate is None else f', {rate:.1f} positions/s'}, "
                f"{s.unconfirmed} unconfirmed")
    return ""


def screen(view: LiveView, queues: list[dict] | None, problems: list[str], config: Config, now: float) -> str:
    lines = [f"cartridge status: RabbitMQ {mask_url(config.broker.url)}, heartbeats of the last "
             f"{config.status.lookback_s:g} s", ""]
    lines.append(f"{'service':<10} {'name':<28} {'state':<9} {'heard':>9}  details")
    for i in view.sorted():
        problem = i.problem(now, view.missed_beats)
        state = "DOWN" if problem else i.last.state
        lines.append(f"{i.service:<10} {i.name:<28} {state:<9} {now - i.last_at:>7.0f} s  {details(i)}")
    if not view.instances:
        lines.append("(no service heard from)")
    lines.append("")
    if queues is not None:
        lines.append("queues: " + (", ".join(f"{q['name']} {q['ready']} ready, {q['unacked']} unacked, "
                                             f"{q['consumers']} consumers" for q in queues) or "none declared yet"))
    trainers = view.of(TrainerStatus)
    newest = max((t.last.version for t in trainers), default=None)
    rated = evaluated(view)
    model = f"newest model: v{newest}" if newest is not None else "newest model: - (no trainer heard from)"
    if rated is not None and rated.rating is not None:
        model += f"; v{rated.version} rated {rated.rating:.0f} ± {rated.rating_error:.0f}"
    lines.append(model)
    lines.append("")
    lines.extend(f"DOWN: {p}" for p in problems)
    lines.append("OK: every service heard from is up" if not problems else f"{len(problems)} problem(s)")
    return "\n".join(lines)


async def gather(config: Config, expect: list[str]) -> tuple[LiveView, list[dict] | None, list[str]]:
    view, problems = LiveView(missed_beats=config.status.missed_beats), []
    try:
        for beat in await read_recent(config.broker, config.status.lookback_s):
            view.observe_beat(beat)
    except DependencyError as exc:
        problems.append(str(exc))
    now = time.time()
    problems += [f"{i.service} {i.name}: {why}" for i, why in view.down(now)]
    for service in expect:
        if not any(i.service == service for i in view.instances.values()):
            problems.append(f"{service}: never heard from in the last {config.status.lookback_s:g} s (--expect)")
    queues = None
    try:
        queues = await queue_depths(config.broker)
    except DependencyError as exc:
        problems.append(str(exc))
    return view, queues, problems


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("cartridge status", __doc__.splitlines()[0])
    parser.add_argument("--expect", action="append", default=[], choices=["actor", "ingest", "trainer", "evaluator"],
                        help="a service that must be running even if never heard from (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the services and problems as JSON")
    args = parser.parse_args(argv)
    config = load_command_config(parser, args)
    view, queues, problems = asyncio.run(gather(config, args.expect))
    now = time.time()
    if args.json:
        print(json.dumps({**view.snapshot(now), "queues": queues, "problems": problems}))
    else:
        print(screen(view, queues, problems, config, now))
    return 1 if problems else 0
