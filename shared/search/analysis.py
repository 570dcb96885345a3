"""What a model makes of given positions, for judging it rather than training it: the
raw network output, or a search without exploration noise. `cartridge analyze`,
`cartridge arena` and the evaluator all score models with this one function.
"""

from __future__ import annotations

import msgspec
import numpy as np

from shared.config import MCTSConfig
from shared.games import Game
from shared.inference import Evaluator
from shared.search.mcts import BatchedMCTS, masked_softmax


def search_positions(
    game: Game, evaluator: Evaluator, boards: np.ndarray, sims: int, mcts_config: MCTSConfig
) -> tuple[np.ndarray, np.ndarray]:
    """`(policy float32[n, A], value float32[n])` for `boards` (`int8[n, H, W]`, none
    finished), values from the side to move's view.

    `sims == 0`: the network's own policy (softmax over the legal moves) and value.
    Otherwise one search of `sims` simulations per board, all boards batched, with
    `mcts_config`'s PUCT settings but no Dirichlet noise: the policy is the root visit
    distribution and the value the root's mean value. Deterministic: the same model and
    boards give the same answer.
    """
    n, a = len(boards), game.num_actions
    if n == 0:
        return np.zeros((0, a), np.float32), np.zeros(0, np.float32)
    if sims == 0:
        logits, value = evaluator(game.observe(boards))
        return masked_softmax(logits, game.legal_mask(boards)).astype(np.float32), np.asarray(value, np.float32)
    config = msgspec.structs.replace(mcts_config, num_simulations=sims, dirichlet_epsilon=0.0)
    # With no noise the search draws no random numbers; the generator is only required.
    search = BatchedMCTS(game, config, n, np.random.default_rng(0))
    slots = np.arange(n)
    search.start(slots, boards)
    while search.simulate(evaluator):
        pass
    return search.visit_policy(slots), search.root_value(slots).astype(np.float32)
