"""Bradley-Terry ratings on the Elo scale, with standard errors, from game results.

Model: player i scores against player j with probability
`1 / (1 + 10 ** ((r_j - r_i) / 400))`; a draw counts as half a win and half a loss.
The ratings maximise the likelihood of all results (Newton's method: the
log-likelihood is concave), with one anchor player fixed at 0 (e.g. `random`), so a
rating reads "Elo points above the anchor" and stays comparable as players are added.

Prior: every pair of players that met gets `prior_draws` virtual draws (default 1), as
BayesElo does. Without it a model that wins every game has an infinite maximum-
likelihood rating; with it the rating is finite and reads "at least this much better".
Virtual draws between the players who actually met, rather than against the anchor,
pull each gap towards zero only in proportion to how little that pair has played: a
model that beats `random` every time is not dragged back towards `random` by a draw it
never played against it, and the prior's weight vanishes as real games accumulate.

Standard errors come from the inverse of the negative Hessian of the log-likelihood
(the observed Fisher information, prior included) over the non-anchor players: they
are errors relative to the anchor, which has none.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping

import msgspec
import numpy as np

ELO_PER_NAT = 400 / math.log(10)
"""Elo points per unit of log-odds (natural units of the model)."""


class PairRecord(msgspec.Struct, frozen=True):
    """All games between two players, counted from `a`'s view."""

    a: str
    b: str
    wins: float
    draws: float
    losses: float


class Rating(msgspec.Struct, frozen=True):
    rating: float
    """Elo points above the anchor."""
    stderr: float
    """Standard error of `rating` relative to the anchor (0 for the anchor)."""
    games: float
    """Real games played (virtual draws not counted)."""


def expected_score(rating_a: float, rating_b: float) -> float:
    """A's expected score against B (wins + draws / 2 per game)."""
    return 1 / (1 + 10 ** ((rating_b - rating_a) / 400))


def tally(games: Iterable[tuple[str, str, float]]) -> list[PairRecord]:
    """`(player_a, player_b, score_a)` results, `score_a` in {1, 0.5, 0}, counted per
    pair of players."""
    counts: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for i, (a, b, score) in enumerate(games):
        _check_pair(a, b, f"game {i}")
        if score not in (0, 0.5, 1):
            raise ValueError(f"game {i} ({a} vs {b}): score {score!r} is not 1, 0.5 or 0")
        if a > b:  # one record per unordered pair
            a, b, score = b, a, 1 - score
        counts[a, b][{1: 0, 0.5: 1, 0: 2}[score]] += 1
    return [PairRecord(a, b, *c) for (a, b), c in counts.items()]


def reachable(pairs: Iterable[tuple[str, str]], start: str) -> set[str]:
    """Every player linked to `start` by a chain of pairs that met (`start` included)."""
    neighbours: dict[str, set[str]] = defaultdict(set)
    for a, b in pairs:
        neighbours[a].add(b)
        neighbours[b].add(a)
    reached, frontier = {start}, [start]
    while frontier:
        for other in neighbours.pop(frontier.pop(), ()):
            if other not in reached:
                reached.add(other)
                frontier.append(other)
    return reached


def connected(records: Iterable[PairRecord], anchor: str) -> list[PairRecord]:
    """The records among the players that games connect to `anchor`: the others have no
    rating relative to it (`fit_ratings` refuses them)."""
    records = list(records)
    reached = reachable(((r.a, r.b) for r in records), anchor)
    return [r for r in records if r.a in reached]  # b met a: reached as well


def _check_pair(a, b, where: str) -> None:
    for name in (a, b):
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: player name {name!r} is not a non-empty string")
    if a == b:
        raise ValueError(f"{where}: {a!r} cannot play against itself")


class Ratings(dict[str, Rating]):
    """A fit's ratings by player, and their joint uncertainty: two players' errors
    relative to the anchor share the anchor chain's uncertainty, so the error of their
    *difference* can be far smaller than either (`gap`)."""

    def __init__(self, ratings: dict[str, Rating], covariance: np.ndarray | None = None,
                 names: list[str] = ()):
        super().__init__(ratings)
        # Elo^2, between the non-anchor players `names`: one array, not a dict of pairs
        # (with a few hundred versions that dict alone held tens of MB).
        self._covariance = covariance if covariance is not None else np.zeros((0, 0))
        self._index = {name: i for i, name in enumerate(names)}

    def _cov(self, a: str, b: str) -> float:
        i, j = self._index.get(a), self._index.get(b)
        return 0.0 if i is None or j is None else float(self._covariance[i, j])

    def gap(self, a: str, b: str) -> Rating:
        """`a`'s rating minus `b`'s, with the standard error of that difference."""
        var = self._cov(a, a) + self._cov(b, b) - 2 * self._cov(a, b)
        return Rating(rating=self[a].rating - self[b].rating, stderr=math.sqrt(max(var, 0.0)),
                      games=min(self[a].games, self[b].games))


def fit_ratings(records: Iterable[PairRecord], anchor: str, prior_draws: float = 1.0,
                tolerance: float = 1e-9, max_iterations: int = 100) -> Ratings:
    """Elo ratings of every player in `records`, `anchor` at exactly 0.

    Every player must be connected to the anchor through games (a group that never met
    the anchor's group has no defined rating relative to it); `ValueError` names those
    that are not.
    """
    if not prior_draws > 0:
        raise ValueError(f"prior_draws must be positive (it keeps ratings finite), got {prior_draws}")
    players, score, games = _matrices(records)
    if anchor not in players:
        raise ValueError(f"anchor {anchor!r} has played no games (players: {sorted(players)})")
    index = {name: i for i, name in enumerate(players)}
    _check_connected(players, games, index[anchor])
    # Posterior counts: each pair that met gets the virtual draws, half a point each way.
    met = games > 0
    score = score + met * prior_draws / 2
    total = games + met * prior_draws

    free = np.array([i for i in range(len(players)) if i != index[anchor]])
    theta = np.zeros(len(players))  # natural units; the anchor's stays 0

    def log_likelihood(t: np.ndarray) -> float:
        diff = t[:, None] - t[None, :]
        return float(-(score * np.logaddexp(0, -diff)).sum())

    current = log_likelihood(theta)
    for _ in range(max_iterations):
        p = 1 / (1 + np.exp(theta[None, :] - theta[:, None]))  # p[i, j]: i scores vs j
        gradient = (score - total * p).sum(axis=1)
        information = _information(total * p * (1 - p))
        step = np.linalg.solve(information[np.ix_(free, free)], gradient[free])
        # Halve the step until the likelihood does not fall (Newton can overshoot far out).
        scale = 1.0
        while True:
            trial = theta.copy()
            trial[free] += scale * step
            value = log_likelihood(trial)
            if value >= current - 1e-12 or scale < 1e-6:
                break
            scale /= 2
        theta, current = trial, value
        if np.abs(scale * step).max() < tolerance:
            break
    else:
        raise RuntimeError(f"rating fit did not converge in {max_iterations} iterations")

    p = 1 / (1 + np.exp(theta[None, :] - theta[:, None]))
    covariance = np.linalg.inv(_information(total * p * (1 - p))[np.ix_(free, free)])
    stderr = np.zeros(len(players))
    stderr[free] = np.sqrt(np.diag(covariance))
    played = games.sum(axis=1)
    names = [players[i] for i in free]
    return Ratings({
        name: Rating(rating=float(theta[i] * ELO_PER_NAT) + 0.0,  # + 0.0: no -0.0
                     stderr=float(stderr[i] * ELO_PER_NAT), games=float(played[i]))
        for name, i in index.items()
    }, covariance * ELO_PER_NAT ** 2, names)


def _matrices(records: Iterable[PairRecord]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Players, `score[i, j]` (points i took from j) and `games[i, j]`."""
    rows = list(records)
    players = sorted({r.a for r in rows} | {r.b for r in rows})
    index = {name: i for i, name in enumerate(players)}
    score = np.zeros((len(players), len(players)))
    games = np.zeros_like(score)
    for n, r in enumerate(rows):
        _check_pair(r.a, r.b, f"record {n}")
        counts = (r.wins, r.draws, r.losses)
        if not all(math.isfinite(c) and c >= 0 for c in counts):
            raise ValueError(f"record {n} ({r.a} vs {r.b}): counts {counts} must be finite and non-negative")
        i, j = index[r.a], index[r.b]
        score[i, j] += r.wins + r.draws / 2
        score[j, i] += r.losses + r.draws / 2
        games[i, j] += sum(counts)
        games[j, i] += sum(counts)
    return players, score, games


def _check_connected(players: list[str], games: np.ndarray, anchor: int) -> None:
    reached = reachable(((players[i], players[j]) for i, j in zip(*np.nonzero(games))), players[anchor])
    cut_off = [name for name in players if name not in reached]
    if cut_off:
        raise ValueError(f"no games connect {cut_off} to the anchor {players[anchor]!r}: their ratings are undefined")


def _information(weights: np.ndarray) -> np.ndarray:
    """Negative Hessian of the log-likelihood for pairwise weights `N p (1 - p)`: a graph
    Laplacian (row sums on the diagonal, minus the weights off it)."""
    return np.diag(weights.sum(axis=1)) - weights


def rank_opponents(rating: float, stderr: float, candidates: Mapping[str, Rating]) -> list[tuple[str, float]]:
    """Candidates ordered by the information one game against them is expected to give
    about a player rated `rating` +- `stderr` (Elo), most informative first.

    Information per game is the Fisher information `p (1 - p)` of the result, with `p`
    the expected score at the player's uncertain rating (the logistic averaged over a
    normal rating error, probit approximation: the difference shrunk by
    `sqrt(1 + pi s^2 / 8)`), divided by `1 + p (1 - p) s_j^2` because a game measures
    the rating difference, and the opponent's own error `s_j` adds to it. A new player
    without any games can use a guess (e.g. the previous model version's rating) with a
    large `stderr`. Values are in natural units (log-odds^-2), for comparison only.
    """
    s = stderr / ELO_PER_NAT
    ranked = []
    for name, opponent in candidates.items():
        diff = (rating - opponent.rating) / ELO_PER_NAT / math.sqrt(1 + math.pi * s * s / 8)
        p = 1 / (1 + math.exp(-diff))
        fisher = p * (1 - p)
        ranked.append((name, fisher / (1 + fisher * (opponent.stderr / ELO_PER_NAT) ** 2)))
    return sorted(ranked, key=lambda item: -item[1])
