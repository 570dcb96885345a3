"""Rating games between two players, all played at once, one batched call per move.

Two deterministic players would play the same game every time, so each game starts
with a few uniformly random plies (`opening_plies`, default 2) before the players take
over. An opening can favour one colour, so every opening is played twice with the
colours swapped: pairs cancel the opening's bias, and the colours alternate exactly.
Everything is seeded: the same seed gives the same openings and, with seeded or
deterministic players, the same games.

Players are `Player` callables (boards from the side to move's view -> actions), as in
`shared.players`; `anchor_player` builds the fixed opponents by name and
`model_player` a network's noise-free, greedy search.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np

from services.evaluator.alphabeta import alphabeta_player
from shared.config import MCTSConfig
from shared.games import Game
from shared.inference import Evaluator
from shared.players import Player, one_ply_player, random_player, search_player

ALPHABETA_PREFIX = "alphabeta-"


class GameRecord(msgspec.Struct, frozen=True):
    """One finished rating game."""

    score_a: float
    """Result from player A's view: 1 won, 0.5 draw, 0 lost."""
    moves: str
    """The whole game in the game's move notation, the random opening included."""
    a_first: bool
    """Whether player A made the first move."""


def is_anchor(name: str) -> bool:
    """Whether `name` names a fixed opponent (`anchor_player`'s) rather than a model;
    a bad alpha-beta depth counts, for `anchor_player` to refuse by name."""
    return name in ("random", "one-ply") or name.startswith(ALPHABETA_PREFIX)


def anchor_player(game: Game, name: str, seed: int = 0) -> Player:
    """A fixed opponent by name: `random`, `one-ply` or `alphabeta-<depth>`."""
    rng = np.random.default_rng(seed)
    if name == "random":
        return random_player(game, rng)
    if name == "one-ply":
        return one_ply_player(game, rng)
    if name.startswith(ALPHABETA_PREFIX) and name[len(ALPHABETA_PREFIX):].isdecimal():
        return alphabeta_player(game, int(name[len(ALPHABETA_PREFIX):]))
    raise ValueError(f"unknown anchor player {name!r}: expected 'random', 'one-ply' or 'alphabeta-<depth>'")


def model_player(game: Game, evaluator: Evaluator, sims: int, mcts: MCTSConfig | None = None) -> Player:
    """The model's most visited move after a `sims`-simulation search without noise."""
    return search_player(game, evaluator, sims, mcts or MCTSConfig())


def random_openings(game: Game, count: int, plies: int, rng: np.random.Generator) -> np.ndarray:
    """`int[count, plies]`: uniformly random move sequences that leave the game running
    (one that ends it is drawn again)."""
    if plies >= game.max_plies:
        raise ValueError(f"an opening of {plies} plies leaves no move to play in {game.env_id}")
    openings = np.zeros((count, plies), np.int64)
    pick = random_player(game, rng)
    redo = np.arange(count)
    while len(redo):
        boards = game.initial_boards(len(redo))
        over = np.zeros(len(redo), bool)
        for ply in range(plies):
            # A finished game plays on (its board is never full: plies < max_plies); it
            # is drawn again anyway.
            openings[redo, ply] = actions = pick(boards)
            boards, done, _ = game.play(boards, actions)
            over |= done
        redo = redo[over]
    return openings


def play_games(game: Game, player_a: Player, player_b: Player, openings: int, *,
               opening_plies: int = 2, seed: int = 0) -> list[GameRecord]:
    """`2 * openings` games: game `2i` is opening `i` with A first, game `2i + 1` the same
    opening with B first."""
    return play_against(game, player_a, [player_b], openings, opening_plies=opening_plies, seed=seed)[0]


def play_against(game: Game, player_a: Player, opponents: Sequence[Player], openings: int, *,
                 opening_plies: int = 2, seed: int = 0) -> list[list[GameRecord]]:
    """A against every opponent at once, `play_games`' games per opponent. A's moves in
    all games are one batch: a model's search, the costly part, runs once per move for
    all opponents together. Every opponent meets the same openings, so differences
    between opponents are not opening luck."""
    if openings < 1:
        raise ValueError(f"openings must be at least 1, got {openings}")
    if opening_plies < 0:
        raise ValueError(f"opening_plies must be 0 or more, got {opening_plies}")
    if not opponents:
        raise ValueError("no opponents to play against")
    per = 2 * openings
    n = per * len(opponents)
    pairs = np.repeat(random_openings(game, openings, opening_plies, np.random.default_rng(seed)), 2, axis=0)
    opening = np.tile(pairs, (len(opponents), 1))
    a_first = np.arange(n) % 2 == 0
    group = np.arange(n) // per
    sides = [(player_a, True, np.ones(n, bool))] + [(p, False, group == j) for j, p in enumerate(opponents)]
    moves = np.full((n, game.max_plies), -1, np.int64)
    plies = np.zeros(n, np.int64)  # moves made in each game
    a_to_move = a_first.copy()
    score_a = np.full(n, 0.5)
    boards = game.initial_boards(n)
    live = np.ones(n, bool)
    while live.any():
        # Each player moves in every game waiting for it. After A's first call every
        # game waits for the opponents, then for A, ...: each call is one batch.
        for player, is_a, games in sides:
            rows = np.flatnonzero(live & games & (a_to_move == is_a))
            if not len(rows):
                continue
            ply = plies[rows]
            book = ply < opening_plies
            actions = np.zeros(len(rows), np.int64)
            actions[book] = opening[rows[book], ply[book]]
            if not book.all():
                actions[~book] = player(boards[rows[~book]])
            boards[rows], done, value = game.play(boards[rows], actions)
            moves[rows, ply] = actions
            plies[rows] += 1
            a_to_move[rows] = not is_a
            ended = rows[done]
            # value < 0: whoever just moved won.
            score_a[ended] = np.where(value[done] < 0, 1.0 if is_a else 0.0, 0.5)
            live[ended] = False
    records = [
        GameRecord(score_a=float(s), moves=game.format_moves(m[m >= 0]), a_first=bool(f))
        for s, m, f in zip(score_a, moves, a_first)
    ]
    return [records[j * per:(j + 1) * per] for j in range(len(opponents))]
