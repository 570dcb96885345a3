"""The regression guard: which version should actors serve, given the ratings?

Pure: ratings in, a decision (or none) out. Two rules, applied after each version is
rated:
- roll back: the newest version, once it has played `min_games`, rates below the best
  rated version by more than twice their combined standard error -> serve the best and
  hold it (newer models are ignored until a take-over);
- take over: while holding, a newer version rating at least as well as the best ends the
  hold: actors serve the newest again.
Two standard errors: about a 2.3 % chance per version of rolling back for nothing when
the two are equally strong (a one-sided normal tail), against missing a real regression.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import msgspec

from services.evaluator.ratings import Rating
from shared.model_store import ServingPointer


class Decision(msgspec.Struct, frozen=True):
    version: int
    hold: bool
    reason: str


def decide(ratings: Mapping[int, Rating], newest: int, serving: ServingPointer | None,
           min_games: int) -> Decision | None:
    """What to serve after `newest` (a key of `ratings`, the versions rated so far) was
    rated; None: nothing changes."""
    new = ratings[newest]
    best = max(ratings, key=lambda v: (ratings[v].rating, v))
    top = ratings[best]
    holding = serving is not None and serving.hold
    if holding:
        if best == newest or new.rating >= top.rating:
            return Decision(newest, False, f"model {newest} rates {new.rating:.0f} +- {new.stderr:.0f}, at least "
                                           f"as well as the best ({top.rating:.0f}): it takes over")
        return None
    if best == newest or new.games < min_games:
        return None
    gap, error = top.rating - new.rating, math.hypot(top.stderr, new.stderr)
    if gap > 2 * error:
        return Decision(best, True, f"model {newest} rates {new.rating:.0f} +- {new.stderr:.0f}, "
                                    f"{gap:.0f} below model {best} ({top.rating:.0f} +- {top.stderr:.0f}), "
                                    f"more than twice the combined error ({error:.0f}): rolled back to {best}")
    return None
