"""Test data: real self-play games, message bodies built from games, and row
comparison, running services in a test. Random games come from `shared.games.random_play` (the benchmarks use them
too)."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.error
import urllib.request

import numpy as np

from shared.games import get_game
from shared.messages import encode_transitions
from shared.transitions import Transitions, to_batch


class HashEvaluator:
    """A deterministic, non-uniform stand-in for the network: fixed random integer linear
    maps of the observation. Integer arithmetic and one division per output make each
    row's result independent of the batch it comes in, so batched and one-at-a-time
    evaluation agree bit for bit."""

    version = 0

    def __init__(self, game, seed: int = 0):
        rng = np.random.default_rng(seed)
        d = int(np.prod(game.obs_shape))
        self.w_logits = rng.integers(-6, 7, size=(d, game.num_actions))
        self.b_logits = rng.integers(-6, 7, size=game.num_actions)
        self.w_value = rng.integers(-6, 7, size=d)
        self.b_value = int(rng.integers(-3, 4))
        self.rows = 0

    def __call__(self, obs: np.ndarray):
        x = obs.reshape(len(obs), -1).astype(np.int64)
        self.rows += len(obs)
        logits = ((x @ self.w_logits + self.b_logits) / 4).astype(np.float32)
        value = (np.clip(x @ self.w_value + self.b_value, -12, 12) / 13).astype(np.float32)
        return logits, value


def play_games(env_id: str = "tictactoe", games: int = 6, sims: int = 8, seed: int = 0) -> list[Transitions]:
    """Finished self-play games (uniform evaluator, real search), one Transitions per game."""
    from services.actor.selfplay import SelfPlay
    from shared.config import MCTSConfig
    from shared.inference import UniformEvaluator

    game = get_game(env_id)
    sp = SelfPlay(game, MCTSConfig(num_simulations=sims), UniformEvaluator(game),
                  num_games=min(games, 8), max_games=games, seed=seed)
    finished = []
    while sp.running:
        finished += sp.step()
    return [f.transitions for f in finished]


def message(t: Transitions, env_id: str = "tictactoe", batch_id: str | None = None, actor_id: str = "test") -> tuple[str, bytes]:
    """`(batch_id, msgpack body)` of one transition message holding `t`."""
    batch = to_batch(t, env_id=env_id, actor_id=actor_id, batch_id=batch_id)
    return batch.batch_id, encode_transitions(batch)


def assert_same_rows(a: Transitions, b: Transitions) -> None:
    assert len(a) == len(b), f"{len(a)} rows, expected {len(b)}"
    for name in Transitions.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


WAIT_S = 60  # generous bound for CI; the latency itself is asserted separately


@contextlib.asynccontextmanager
async def running(*services):
    """Run `service.run(stop)` for each service in the background; stop them all after."""
    stops = [asyncio.Event() for _ in services]
    tasks = [asyncio.create_task(s.run(stop)) for s, stop in zip(services, stops)]
    try:
        yield tasks
    finally:
        for stop in stops:
            stop.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT_S)
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, errors


async def wait_until(predicate, what: str, timeout: float = WAIT_S, tasks=()):
    async with asyncio.timeout(timeout):
        while not predicate():
            for t in tasks:  # a crashed service fails the test at once, with its error
                if t.done():
                    t.result()
                    raise AssertionError(f"a service stopped while waiting for {what}")
            await asyncio.sleep(0.05)


def get(url: str, timeout: float = 10) -> tuple[int, str]:
    """`(HTTP status, body)` of a GET; an error status is returned, not raised; no answer
    at all is status 0 with the reason as the body."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


async def delete_logins(prefix: str, database_url: str | None = None) -> None:
    """The RabbitMQ users and PostgreSQL roles `cartridge provision --prefix` made; what the
    roles own in `database_url` is dropped first (none if that database is gone)."""
    import aiohttp
    import asyncpg

    from shared.bus.management import api_login
    from shared.config import BrokerConfig

    services = ("actor", "ingest", "trainer", "evaluator", "operator", "web")
    if database_url:
        conn = await asyncpg.connect(database_url)
        try:
            roles = [r[0] for r in await conn.fetch("SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", prefix)]
            for role in roles:  # one at a time: PostgreSQL fails on default ACLs shared by several
                await conn.execute(f'DROP OWNED BY "{role}" CASCADE')
        finally:
            await conn.close()
    base, _, auth = api_login(BrokerConfig())  # guest, on this machine's broker
    async with aiohttp.ClientSession(headers=auth) as http:
        for s in services:
            async with http.delete(f"{base}/api/users/{prefix}{s}"):
                pass
    conn = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        for s in services:
            await conn.execute(f'DROP ROLE IF EXISTS "{prefix}{s}"')
    finally:
        await conn.close()
