"""Bradley-Terry ratings: recovers known Elo gaps from simulated games within their
standard errors, anchoring, the virtual-draw prior under perfect separation, and the
choice of informative opponents."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.evaluator.ratings import (
    PairRecord, Rating, expected_score, fit_ratings, rank_opponents, tally,
)

TRUE = {"random": 0, "weak": 200, "mid": 400, "strong": 800}


def simulate(games_per_pair: int, seed: int, draw_rate: float = 0.2) -> list[tuple[str, str, float]]:
    """Round robin between players of known Elo; a draw takes `draw_rate` of each
    game's probability mass while keeping the expected score."""
    rng = np.random.default_rng(seed)
    names = list(TRUE)
    games = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            p = expected_score(TRUE[a], TRUE[b])
            draw = draw_rate * min(p, 1 - p) * 2
            win = p - draw / 2
            for u in rng.random(games_per_pair):
                games.append((a, b, 1.0 if u < win else 0.5 if u < win + draw else 0.0))
    return games


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_known_gaps_within_three_standard_errors_in_the_right_order(seed):
    ratings = fit_ratings(tally(simulate(300, seed)), anchor="random")
    assert ratings["random"] == Rating(rating=0.0, stderr=0.0, games=900.0)
    order = sorted(ratings, key=lambda name: ratings[name].rating)
    assert order == ["random", "weak", "mid", "strong"]
    for name in ("weak", "mid", "strong"):
        r = ratings[name]
        assert 5 < r.stderr < 60
        assert abs(r.rating - TRUE[name]) < 3 * r.stderr, (name, r)


def test_errors_shrink_with_more_games():
    few = fit_ratings(tally(simulate(50, 4)), anchor="random")
    many = fit_ratings(tally(simulate(800, 4)), anchor="random")
    for name in ("weak", "mid", "strong"):
        # Sixteen times the games: errors about four times smaller.
        assert 3 < few[name].stderr / many[name].stderr < 5.5


def test_anchoring_shifts_every_rating_by_the_same_amount():
    records = tally(simulate(200, 5))
    by_random = fit_ratings(records, anchor="random")
    by_mid = fit_ratings(records, anchor="mid")
    assert by_mid["mid"].rating == 0.0 and by_mid["mid"].stderr == 0.0
    shift = by_random["mid"].rating
    for name in TRUE:
        assert by_mid[name].rating == pytest.approx(by_random[name].rating - shift, abs=1e-6)
    # The error of a gap does not depend on which end is fixed.
    assert by_mid["random"].stderr == pytest.approx(by_random["mid"].stderr, rel=1e-6)


def test_games_and_counts_give_the_same_fit():
    games = [("a", "b", 1.0)] * 7 + [("b", "a", 1.0)] * 2 + [("a", "b", 0.5)] * 3
    counts = [PairRecord("a", "b", wins=7, draws=3, losses=2)]
    assert tally(games) == counts
    assert fit_ratings(tally(games), "b") == fit_ratings(counts, "b")
    # 8.5 of 12 plus one virtual draw: 9 of 13 points, exactly the logistic's inverse.
    assert fit_ratings(counts, "b")["a"].rating == pytest.approx(400 * math.log10(9 / 4))


def test_perfect_separation_stays_finite_and_ordered():
    # The model wins every game against everyone; random loses every game.
    games = ([("model", "alphabeta-4", 1.0)] * 20 + [("model", "random", 1.0)] * 20
             + [("alphabeta-4", "random", 1.0)] * 20)
    ratings = fit_ratings(tally(games), anchor="random")
    assert all(math.isfinite(r.rating) and math.isfinite(r.stderr) for r in ratings.values())
    assert 0 < ratings["alphabeta-4"].rating < ratings["model"].rating < 2000
    # More perfect wins: higher, still finite.
    more = fit_ratings(tally(games + [("model", "alphabeta-4", 1.0)] * 80), anchor="random")
    assert ratings["model"].rating < more["model"].rating < 2500


def test_a_stronger_prior_pulls_gaps_towards_zero():
    counts = [PairRecord("a", "b", wins=9, draws=0, losses=1)]
    gaps = [fit_ratings(counts, "b", prior_draws=d)["a"].rating for d in (0.5, 1, 4)]
    assert gaps[0] > gaps[1] > gaps[2] > 0


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="score 2"):
        tally([("a", "b", 2)])
    with pytest.raises(ValueError, match="against itself"):
        tally([("a", "a", 1)])
    with pytest.raises(ValueError, match="non-empty string"):
        tally([("", "a", 1)])
    with pytest.raises(ValueError, match="non-negative"):
        fit_ratings([PairRecord("a", "b", -1, 0, 0)], "a")
    with pytest.raises(ValueError, match="anchor 'z'"):
        fit_ratings([PairRecord("a", "b", 1, 0, 0)], "z")
    with pytest.raises(ValueError, match="prior_draws must be positive"):
        fit_ratings([PairRecord("a", "b", 1, 0, 0)], "a", prior_draws=0)
    with pytest.raises(ValueError, match=r"no games connect \['c', 'd'\] to the anchor 'a'"):
        fit_ratings([PairRecord("a", "b", 1, 0, 0), PairRecord("c", "d", 1, 0, 0)], "a")


def test_most_informative_opponents_are_near_in_rating_and_well_known():
    candidates = {
        "random": Rating(0, 0, 1000),
        "one-ply": Rating(300, 20, 1000),
        "alphabeta-4": Rating(700, 20, 1000),
        "alphabeta-4-uncertain": Rating(700, 300, 10),
        "alphabeta-6": Rating(1100, 20, 1000),
    }
    ranked = rank_opponents(650, 50, candidates)
    names = [name for name, _ in ranked]
    assert names[0] == "alphabeta-4"
    assert names.index("alphabeta-4") < names.index("alphabeta-4-uncertain")
    assert names[-1] == "random"
    info = dict(ranked)
    assert info["alphabeta-4"] == pytest.approx(0.25, abs=0.01)  # an even game: p (1 - p) at its peak
    # The less sure we are of the player, the less a near opponent stands out.
    spread = [dict(rank_opponents(650, s, candidates)) for s in (50, 400)]
    assert spread[1]["alphabeta-4"] / spread[1]["random"] < spread[0]["alphabeta-4"] / spread[0]["random"]


def _games(a: str, b: str, n: int, score_a: float) -> list:
    """`n` games of `a` against `b`, `score_a` points in all (wins first, then draws)."""
    from shared.evaluations import RatingGame
    wins, draws = int(score_a), round((score_a - int(score_a)) * 2)
    scores = [1.0] * wins + [0.5] * draws + [0.0] * (n - wins - draws)
    return [RatingGame(version=0, player_a=a, player_b=b, score_a=s, moves="", a_first=i % 2 == 0)
            for i, s in enumerate(scores)]


# The anchors' ladder as a real run played it: perfect scores low down, close games above.
LADDER = (_games("one-ply", "random", 20, 20) + _games("alphabeta-2", "one-ply", 20, 20)
          + _games("alphabeta-4", "alphabeta-2", 20, 11.5) + _games("alphabeta-6", "alphabeta-4", 20, 11))


def test_a_version_that_swept_the_weak_anchors_next_meets_strong_ones():
    """A first version's opening round is a guess; once it has beaten random and one-ply
    every time, the next round's opponents are the alpha-beta players (close games)."""
    from services.evaluator.service import choose_opponents, fit, records_of
    swept = LADDER + _games("v1", "random", 10, 10) + _games("v1", "one-ply", 10, 10)
    assert set(choose_opponents(fit(records_of(swept), 1.0), 1)[:2]) <= {"alphabeta-2", "alphabeta-4", "alphabeta-6"}
    # A version is compared with earlier versions only, never with later ones.
    later = swept + _games("v2", "v1", 10, 5)
    assert "v2" not in choose_opponents(fit(records_of(later), 1.0), 1)
    assert "v1" in choose_opponents(fit(records_of(later), 1.0), 2)


def test_a_gap_between_two_players_is_known_better_than_either_rating():
    """Two strong players share the uncertain ladder below them: the error of their
    difference comes from their own games only."""
    from services.evaluator.service import fit, records_of
    games = LADDER + _games("v1", "alphabeta-2", 20, 10) + _games("v2", "v1", 40, 26)
    ratings = fit(records_of(games), 1.0)
    gain = ratings.gap("v2", "v1")
    assert gain.rating == pytest.approx(ratings["v2"].rating - ratings["v1"].rating)
    assert gain.stderr < 0.5 * min(ratings["v1"].stderr, ratings["v2"].stderr)
    assert 50 < gain.rating < 200 and gain.stderr > 0  # 26/40 is about +108 Elo
    assert ratings.gap("v1", "v1").stderr == 0


def test_the_fit_covers_the_window_and_what_games_connect_to_random():
    """Versions older than the window are left out with their games; a version in it whose
    only games were against them has no rating (nothing ties it to `random`), instead of
    failing the fit."""
    from services.evaluator.service import fit, records_of
    games = (LADDER + _games("v1", "alphabeta-2", 20, 10) + _games("v2", "v1", 20, 12)
             + _games("v3", "alphabeta-4", 20, 9) + _games("v4", "v3", 20, 11))
    everything = fit(records_of(games), 1.0)
    assert {"v1", "v2", "v3", "v4"} <= set(everything)
    window = fit(records_of(games), 1.0, since=2)
    assert "v1" not in window and "v2" not in window  # v2 met only v1
    assert {"v3", "v4", "random", "alphabeta-6"} <= set(window)
    assert window["v3"].games == 40 and window.gap("v4", "v3").stderr > 0
    assert fit(records_of(_games("v1", "v2", 4, 2)), 1.0) == {}  # nobody meets random


def test_many_versions_fit_in_memory_that_grows_with_the_players_not_their_pairs():
    """Three hundred versions: the covariance is one array (the dict of pairs it replaced
    held ~90,000 entries here), and gaps read from it."""
    import tracemalloc

    from services.evaluator.service import fit, records_of
    games = list(LADDER)
    for v in range(1, 301):
        games += _games(f"v{v}", "alphabeta-2" if v % 3 == 0 else f"v{max(1, v - 1)}" if v > 1 else "random", 4, 2)
    records = records_of(games)
    tracemalloc.start()
    ratings = fit(records, 1.0)
    kept = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(ratings) == 305
    assert kept < 3e6  # 300 x 300 doubles are 0.7 MB; the dict of pairs was ~18 MB
    assert ratings.gap("v300", "v299").stderr > 0
