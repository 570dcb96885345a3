"""Bad control events and bad model files: the actor's reloader logs why and keeps the
model it has (a unit test: the model store is a local directory, the sessions are real
onnxruntime sessions)."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from services.actor.reloader import ModelReloader
from services.trainer.export import export_onnx
from services.trainer.network import PolicyValueNet
from shared.config import load_config
from shared.games import get_game
from shared.messages import ModelEvaluated, ModelPublished, ReloadRequest, encode_event
from shared.model_store import LocalModelStore, ServingPointer
from shared.model_store.base import model_key

TICTACTOE = get_game("tictactoe")
CONNECT4 = get_game("connect4")


def onnx_for(game, seed: int = 0, planes: int | None = None) -> bytes:
    torch.manual_seed(seed)
    obs_shape = game.obs_shape if planes is None else (planes, *game.obs_shape[1:])
    return export_onnx(PolicyValueNet(obs_shape, game.num_actions, blocks=1, channels=8))


@pytest.fixture
async def reloader(tmp_path):
    config = load_config(environ={}, overrides={
        "common": {"env_id": "tictactoe"}, "storage": {"model_store": "local", "local_model_dir": str(tmp_path)}})
    store = LocalModelStore(config.storage)
    async with store:
        await store.put_model("tictactoe", 1, onnx_for(TICTACTOE), step=10)
        swapped = []
        r = ModelReloader(store, TICTACTOE, config, swapped.append)
        await r.load_initial()
        assert r.current.version == 1 and len(swapped) == 1
        yield r, store, swapped


def published(info) -> bytes:
    return encode_event(ModelPublished(env_id=info.env_id, version=info.version, key=info.key,
                                       sha256=info.sha256, size=info.size, step=info.step))


async def expect_kept(r, swapped, body: bytes, *words: str) -> None:
    failures = len(r.failures)
    await r.handle(body)
    assert r.current.version == 1 and len(swapped) == 1, "the model changed"
    assert len(r.failures) == failures + 1, "nothing was reported"
    for word in words:
        assert word in r.failures[-1], (word, r.failures[-1])


async def test_malformed_json(reloader):
    r, _, swapped = reloader
    await expect_kept(r, swapped, b'{"type": "reload", "version": ', "not a control event")


async def test_other_event_types_are_ignored_quietly(reloader, caplog):
    """model_evaluated (known, not for actors) at DEBUG; an unknown type at WARNING, one
    line; neither is a failure and the model stays."""
    r, _, swapped = reloader
    evaluated = encode_event(ModelEvaluated(env_id="tictactoe", version=5, rating=100.0))
    with caplog.at_level(logging.DEBUG):
        await r.handle(evaluated)
        await r.handle(json.dumps({"type": "explode"}).encode())
    assert r.current.version == 1 and len(swapped) == 1 and r.failures == []
    levels = {rec.levelname for rec in caplog.records if "not for actors" in rec.getMessage()}
    assert levels == {"DEBUG", "WARNING"}
    warning = next(rec for rec in caplog.records if rec.levelname == "WARNING")
    assert "explode" in warning.getMessage() and warning.exc_info is None


async def test_hold_ignores_newer_models_until_a_reload_without_hold(reloader):
    r, store, swapped = reloader
    await store.put_model("tictactoe", 2, onnx_for(TICTACTOE, seed=2), step=20)
    await r.handle(encode_event(ReloadRequest(env_id="tictactoe", version=1, hold=True)))
    assert r.holding and r.current.version == 1
    three = await store.put_model("tictactoe", 3, onnx_for(TICTACTOE, seed=3), step=30)
    await r.handle(published(three))
    assert r.current.version == 1, "a held actor took a published model"
    await r.handle(encode_event(ReloadRequest(env_id="tictactoe", version=None, hold=False)))
    assert not r.holding and r.current.version == 3


async def test_start_and_versionless_reload_follow_a_holding_pointer(reloader, tmp_path):
    r, store, swapped = reloader
    await store.put_model("tictactoe", 2, onnx_for(TICTACTOE, seed=2), step=20)
    await store.put_serving("tictactoe", ServingPointer(version=1, hold=True, reason="test"))
    fresh = ModelReloader(store, TICTACTOE, r.config, [].append)
    await fresh.load_initial()
    assert fresh.current.version == 1 and fresh.holding
    await r.handle(encode_event(ReloadRequest(env_id="tictactoe", version=None)))
    assert r.current.version == 1
    await store.put_serving("tictactoe", ServingPointer(version=1, hold=False))
    newest = ModelReloader(store, TICTACTOE, r.config, [].append)
    await newest.load_initial()
    assert newest.current.version == 2 and not newest.holding


async def test_wrong_field_type(reloader):
    r, _, swapped = reloader
    await expect_kept(r, swapped, json.dumps({"type": "reload", "version": "two"}).encode(), "version")


async def test_unknown_schema_version(reloader):
    r, _, swapped = reloader
    body = json.dumps({"type": "reload", "version": 1, "schema_version": 7}).encode()
    await expect_kept(r, swapped, body, "schema_version 7")


async def test_reload_of_a_version_that_does_not_exist(reloader):
    r, _, swapped = reloader
    await expect_kept(r, swapped, encode_event(ReloadRequest(env_id="tictactoe", version=42)),
                      "model version 42 of tictactoe does not exist", "keeping model 1")


async def test_sha256_mismatch(reloader):
    r, store, swapped = reloader
    info = await store.put_model("tictactoe", 2, onnx_for(TICTACTOE, seed=2), step=20)
    event = ModelPublished(env_id="tictactoe", version=2, key=info.key, sha256="0" * 64,
                           size=info.size, step=20)
    await expect_kept(r, swapped, encode_event(event), "sha256", "keeping model 1")


async def test_file_replaced_behind_the_stores_back(reloader, tmp_path):
    r, store, swapped = reloader
    info = await store.put_model("tictactoe", 2, onnx_for(TICTACTOE, seed=2), step=20)
    (tmp_path / model_key("tictactoe", 2)).write_bytes(onnx_for(TICTACTOE, seed=3))
    await expect_kept(r, swapped, published(info), "sha256", "keeping model 1")


@pytest.mark.parametrize("data, words", [
    (b"this is not an onnx model", ["not a valid ONNX model"]),
    (onnx_for(TICTACTOE)[:200], ["not a valid ONNX model"]),
    (onnx_for(CONNECT4), ["tictactoe"]),
    (onnx_for(TICTACTOE, planes=3), ["input"]),
], ids=["not-onnx", "truncated", "other-game", "wrong-input-shape"])
async def test_unusable_model_files(reloader, data, words):
    r, store, swapped = reloader
    info = await store.put_model("tictactoe", 2, data, step=20)  # stored as is, sha256 matches
    await expect_kept(r, swapped, published(info), "cannot load model 2", "keeping model 1", *words)
    # ...and a good model after it still loads.
    good = await store.put_model("tictactoe", 3, onnx_for(TICTACTOE, seed=3), step=30)
    await r.handle(published(good))
    assert r.current.version == 3


async def test_failures_are_logged(reloader, caplog):
    r, _, swapped = reloader
    with caplog.at_level(logging.ERROR):
        await r.handle(b"\x00\x01")
    assert any("not a control event" in rec.getMessage() for rec in caplog.records)
