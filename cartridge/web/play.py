"""Playing a stored model from the web page: the position comes as a move string, every
move in it is checked, and the model answers with a noise-free search
(`shared.search.analysis.search_positions`, the one `analyze`, `arena` and the evaluator
use) run in a worker thread, never on the event loop.

The server keeps no game: each request carries the whole game so far (`moves`), so a
reload of the page, or two players at once, need nothing more. Bad input raises
`BadRequest` naming what is wrong (the page shows it; the HTTP answer is a 400).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

import numpy as np

from shared.config import Config
from shared.games import Game, IllegalMove, get_game
from shared.inference import ModelError, OnnxEvaluator
from shared.model_store import ModelCorrupt, ModelNotFound, ModelStore, StoreUnavailable
from shared.search.analysis import search_positions

CACHED_MODELS = 4  # onnxruntime sessions kept (one per version played recently)
SEARCHES_AT_ONCE = 1  # searches are CPU work: one at a time leaves the machine to training


class BadRequest(ValueError):
    """The request cannot be played; the message names what is wrong."""


class ModelPlayer:
    def __init__(self, config: Config, store: ModelStore):
        self.config, self.store = config, store
        self.game: Game = get_game(config.common.env_id)
        self._models: OrderedDict[int, OnnxEvaluator] = OrderedDict()
        self._loading = asyncio.Lock()
        self._searching = asyncio.Semaphore(SEARCHES_AT_ONCE)

    def check(self, request: object) -> tuple[int, int, str]:
        """`(version, sims, moves)` from the request's JSON body, or `BadRequest`."""
        if not isinstance(request, dict):
            raise BadRequest("the body must be a JSON object with version, sims and moves")
        unknown = set(request) - {"version", "sims", "moves"}
        if unknown:
            raise BadRequest(f"unknown field(s) {sorted(unknown)}; expected version, sims, moves")
        version, sims, moves = request.get("version"), request.get("sims", 200), request.get("moves", "")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise BadRequest(f"version must be a model version number (1 or more), got {version!r}")
        limit = self.config.web.max_simulations
        if not isinstance(sims, int) or isinstance(sims, bool) or not 0 <= sims <= limit:
            raise BadRequest(f"sims must be a whole number from 0 to {limit} (web.max_simulations), got {sims!r}")
        if not isinstance(moves, str) or len(moves) > self.game.max_plies:
            raise BadRequest(f"moves must be a move string of at most {self.game.max_plies} moves, got {moves!r}")
        return version, sims, moves

    async def model(self, version: int) -> OnnxEvaluator:
        async with self._loading:
            if version in self._models:
                self._models.move_to_end(version)
                return self._models[version]
            env = self.game.env_id
            try:
                _, data = await self.store.get_model(env, version, max_bytes=self.config.storage.max_model_bytes)
                evaluator = await asyncio.to_thread(OnnxEvaluator.from_bytes, data, self.game, version=version,
                                                    threads=self.config.actor.onnx_threads)
            except ModelNotFound as exc:
                raise BadRequest(f"unknown version: {exc}") from None
            except (ModelCorrupt, ModelError) as exc:
                raise BadRequest(f"model version {version} cannot be played: {exc}") from None
            self._models[version] = evaluator
            while len(self._models) > CACHED_MODELS:
                self._models.popitem(last=False)
            return evaluator

    async def move(self, request: object) -> dict:
        """The model's answer to the position `moves` (the model is to move), or the
        result if the game is over. Raises `BadRequest`, or `StoreUnavailable`."""
        version, sims, moves = self.check(request)
        game = self.game
        try:
            board, done, value = game.position(moves)
        except IllegalMove as exc:
            raise BadRequest(f"illegal moves: {exc}") from None
        if done:
            return self._finished(moves, board, value, model_to_move=True)
        evaluator = await self.model(version)
        async with self._searching:
            policy, values = await asyncio.to_thread(search_positions, game, evaluator, board[None], sims,
                                                     self.config.mcts)
        action = int(np.argmax(policy[0]))
        if not game.legal_mask(board[None])[0, action]:  # the search never picks one; checked all the same
            raise RuntimeError(f"model {version} chose illegal move {action + 1} in {moves!r}")
        after = moves + game.format_moves([action])
        next_board, next_done, next_value = game.position(after)
        answer = {"version": version, "sims": sims, "moves": after, "model_move": action + 1,
                  "value": round(float(values[0]), 4), "probabilities": [round(float(p), 4) for p in policy[0]]}
        if next_done:
            answer.update(self._finished(after, next_board, next_value, model_to_move=False))
        else:
            answer.update(done=False, result=None, legal=self._legal(next_board))
        return answer

    def _legal(self, board: np.ndarray) -> list[int]:
        return [int(a) + 1 for a in np.flatnonzero(self.game.legal_mask(board[None])[0])]

    @staticmethod
    def _finished(moves: str, board: np.ndarray, value: float, model_to_move: bool) -> dict:
        """`value` is the finished game's outcome for the side that would move next."""
        if value == 0:
            result = "draw"
        else:  # -1: the side that just moved won
            result = "you win" if model_to_move else "model wins"
        return {"moves": moves, "done": True, "result": result, "legal": []}
