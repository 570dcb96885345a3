"""`cartridge ratings [--json]`: every model version's rating and accuracy, as the
evaluator stored them.

    version    step  published            rating       vs previous  games  search % e/m/l  policy % e/m/l
          3    3000  2026-11-27 01:02:03  1245 ± 61    +48 ± 25        40  77/80/88        45/65/66  <- served

Ratings are Elo points above random play, fitted over the stored games of the anchors and
the newest `eval.rating_window` versions (so they sharpen as later versions play the earlier
ones), ± one standard error; a version older than the window shows the rating it was given
right after its own games, marked `*` (`"rating_fitted": false` in `--json`); `vs previous` is the
change from the version rated before, ± the error of that difference (smaller than
either rating's: both share the uncertainty of the anchors' ladder below them); accuracy is the share of
solver-labelled positions (early / mid / late game) where the move chosen is optimal,
with search and with the raw policy. `<- served`: the version actors play (a held one
after a rollback, else the newest). Reads the same config as every command: in a
`cartridge up` directory it shows that run.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from services.evaluator.service import fit, stored_records, version_name, window_start
from shared.config import Config
from shared.evaluations import Evaluations, open_evaluations
from shared.replay import ReplayUnavailable
from shared.retry import DependencyError
from shared.service import base_parser, load_command_config

STAGES = ("early", "mid", "late")


async def rating_rows(config: Config) -> list[dict]:
    """One dict per evaluated version, oldest first (`--json`'s list)."""
    async with open_evaluations(config.storage) as results:
        return await rows_of(results, config)


async def rows_of(results: Evaluations, config: Config) -> list[dict]:
    """`rating_rows` from a results store already open (the web page keeps one)."""
    env = config.common.env_id
    evaluations = await results.evaluations(env)
    since = window_start(max((e.version for e in evaluations), default=1), config.eval.rating_window)
    records = await stored_records(results, env, since)
    servings = await results.servings(env)
    ratings = await asyncio.to_thread(fit, records, config.eval.prior_draws, since)  # CPU work: off the event loop
    held = servings[-1].version if servings and servings[-1].hold else None
    newest_ok = max((e.version for e in evaluations if e.status == "ok"), default=None)
    served = held if held is not None else newest_ok
    rows = []
    previous = None  # the last version rated before this one
    for e in evaluations:
        r = ratings.get(version_name(e.version))
        gain = ratings.gap(version_name(e.version), version_name(previous)) if r and previous else None
        previous = e.version if r else previous
        # Outside the fit: the rating kept from its evaluation (None if from before they were kept).
        rating, error = (round(r.rating, 1), round(r.stderr, 1)) if r else (e.rating, e.rating_error)
        pct = {which: {s: e.accuracy.get(which, {}).get(s, {}).get("optimal_pct") for s in STAGES}
               for which in ("search", "policy")}
        rows.append({"version": e.version, "step": e.step, "status": e.status, "reason": e.reason,
                     "published_at": e.published_at or None, "evaluated_at": e.evaluated_at,
                     "rating": rating, "rating_error": error, "rating_fitted": r is not None,
                     "games": int(r.games) if r else 0,
                     "gain": round(gain.rating, 1) if gain else None,
                     "gain_error": round(gain.stderr, 1) if gain else None,
                     "optimal_pct": pct["search"],
                     "policy_optimal_pct": pct["policy"], "cost_cpu_s": e.cost_cpu_s,
                     "served": e.version == served})
    return rows


def _stages(pct: dict) -> str:
    return "/".join("-" if pct[s] is None else f"{pct[s]:.0f}" for s in STAGES)


def format_table(rows: list[dict]) -> str:
    lines = [f"{'version':>7} {'step':>8}  {'published':<19}  {'rating':<12} {'vs previous':<12} {'games':>5}  "
             f"{'search % e/m/l':<15} {'policy % e/m/l':<15}"]
    for r in rows:
        published = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["published_at"])) if r["published_at"] else "-"
        if r["status"] != "ok":
            lines.append(f"{r['version']:>7} {r['step']:>8}  {published:<19}  {r['status']}: {r['reason']}")
            continue
        rating = "-" if r["rating"] is None else f"{r['rating']:.0f} ± {r['rating_error']:.0f}"
        if r["rating"] is not None and not r["rating_fitted"]:
            rating += "*"
        gain = f"{r['gain']:+.0f} ± {r['gain_error']:.0f}" if r["gain"] is not None else "-"
        mark = "  <- served" if r["served"] else ""
        lines.append(f"{r['version']:>7} {r['step']:>8}  {published:<19}  {rating:<12} {gain:<12} {r['games']:>5}  "
                     f"{_stages(r['optimal_pct']):<15} {_stages(r['policy_optimal_pct']):<15}{mark}".rstrip())
    if any(r["rating"] is not None and not r["rating_fitted"] for r in rows):
        lines.append("* as rated right after its own games (not in the current fit: older than eval.rating_window)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("cartridge ratings", __doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of the table")
    args = parser.parse_args(argv)
    config = load_command_config(parser, args)
    try:
        rows = asyncio.run(rating_rows(config))
    except (ReplayUnavailable, DependencyError) as exc:
        print(f"cartridge ratings: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows))
    elif not rows:
        print(f"no model of {config.common.env_id} evaluated yet")
    else:
        print(format_table(rows))
    return 0
