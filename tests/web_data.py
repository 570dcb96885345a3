"""A short real run for the web page's tests: a few small Connect4 models stored the way
the trainer stores them (step and loss in their record), each rated by the real
evaluator into the real results store. What the page plots must match these rows."""

from __future__ import annotations

import asyncio

from services.evaluator.service import EvaluatorService
from shared.bus import MemoryBus
from shared.config import Config, load_config
from shared.games import get_game
from shared.model_store import open_model_store

# Small, so that three versions are rated in seconds; only `random` and `one-ply` to play.
EVAL = {"simulations": 4, "positions": 4, "games": 4, "game_simulations": 4, "anchors": ["random", "one-ply"],
        "max_behind": 10, "rollback": False}


def web_config(tmp_path, **sections) -> Config:
    """`cartridge up`'s embedded back ends in `tmp_path`, Connect4, a small network."""
    base = {"storage": {"replay_backend": "sqlite", "model_store": "local",
                        "sqlite_path": str(tmp_path / "replay.sqlite"), "local_model_dir": str(tmp_path / "models")},
            "network": {"blocks": 1, "channels": 8}, "eval": dict(EVAL), "common": {"env_id": "connect4"}}
    for section, values in sections.items():
        base.setdefault(section, {}).update(values)
    return load_config(environ={}, overrides=base)


def small_model(game, seed: int) -> bytes:
    """A policy-value model as the trainer's export names it (`obs` -> `policy_logits`,
    `value`), one linear layer per head with random weights: built in milliseconds,
    where a torch export takes seconds."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inputs = int(np.prod(game.obs_shape))
    weights = [numpy_helper.from_array(a.astype(np.float32), name) for name, a in [
        ("wp", rng.normal(0, 0.5, (inputs, game.num_actions))), ("bp", rng.normal(0, 0.5, game.num_actions)),
        ("wv", rng.normal(0, 0.1, (inputs, 1))), ("bv", np.zeros(1)), ("shape", np.array([-1]))]]
    weights[-1] = numpy_helper.from_array(np.array([-1], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["obs"], ["flat"]),
         helper.make_node("Gemm", ["flat", "wp", "bp"], ["policy_logits"]),
         helper.make_node("Gemm", ["flat", "wv", "bv"], ["v"]),
         helper.make_node("Tanh", ["v"], ["vt"]),
         helper.make_node("Reshape", ["vt", "shape"], ["value"])],
        "small", [helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["batch", *game.obs_shape])],
        [helper.make_tensor_value_info("policy_logits", TensorProto.FLOAT, ["batch", game.num_actions]),
         helper.make_tensor_value_info("value", TensorProto.FLOAT, ["batch"])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


async def store_models(config: Config, versions: int = 3) -> None:
    game = get_game(config.common.env_id)
    async with open_model_store(config.storage) as store:
        for version in range(1, versions + 1):
            loss = 3.0 / version
            await store.put_model(game.env_id, version, small_model(game, version), step=100 * version,
                                  metadata={"loss": f"{loss:.6g}", "policy_loss": f"{loss * 0.7:.6g}",
                                            "value_loss": f"{loss * 0.3:.6g}"})


async def rate_all(config: Config) -> None:
    """The real evaluator, until every stored version has a result."""
    evaluator = EvaluatorService(config, bus=MemoryBus())
    stop = asyncio.Event()
    task = asyncio.create_task(evaluator.run(stop))
    try:
        async with asyncio.timeout(120):
            while evaluator.evaluated + evaluator.failed < 3 or await evaluator.waiting():
                if task.done():
                    task.result()
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await task


async def short_run(config: Config, versions: int = 3) -> None:
    await store_models(config, versions)
    await rate_all(config)
