"""Games by `env_id`."""

from shared.games.base import Game, IllegalMove
from shared.games.connect import ConnectGame

GAMES: dict[str, Game] = {
    "connect4": ConnectGame("connect4", rows=6, cols=7, k=4, gravity=True),
    "tictactoe": ConnectGame("tictactoe", rows=3, cols=3, k=3, gravity=False),
}


def get_game(env_id: str) -> Game:
    try:
        return GAMES[env_id]
    except KeyError:
        raise ValueError(f"unknown env_id {env_id!r}; known games: {sorted(GAMES)}") from None


__all__ = ["GAMES", "Game", "IllegalMove", "ConnectGame", "get_game"]
