"""The trainer on real services: waits for data, resumes from its checkpoint, and never
reuses or overwrites a version."""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import numpy as np
import pytest
import torch

from services.trainer.average import WeightAverage, warmed_up_decay
from services.trainer.learner import Batch, Checkpoint, train_step
from services.trainer.network import PolicyValueNet
from services.trainer.schedule import learning_rate
from services.trainer import service as trainer_service
from services.trainer.service import TrainerService, cycle_end
from services.trainer.window import ReplayWindow, Taper, merge_duplicates
from shared.bus import MemoryBus
from shared.config import ConfigError, TrainingConfig, load_config
from shared.games import get_game
from shared.inference import OnnxEvaluator
from shared.messages import ModelPublished, decode_event
from shared.model_store import open_model_store
from shared.replay import open_replay
from helpers import play_games

TTT = get_game("tictactoe")


async def fill_replay(config, games: int = 30) -> int:
    async with open_replay(config.storage, TTT) as replay:
        parts = play_games(games=games)
        await replay.write([(f"b{i}", "tictactoe", "test", t) for i, t in enumerate(parts)])
        return await replay.count("tictactoe")


async def test_cycles_resume_from_the_checkpoint(make_config):
    config = make_config()
    await fill_replay(config)
    bus = MemoryBus()
    events = await bus.subscribe_events()

    first = TrainerService(config, bus=bus)
    await asyncio.wait_for(first.run(cycles=1), 120)
    assert (first.version, first.step) == (1, 5)

    second = TrainerService(config, bus=bus)
    await asyncio.wait_for(second.run(cycles=1), 120)
    assert (second.version, second.step) == (2, 10)
    # It started from the first run's weights, not from scratch.
    async with open_model_store(config.storage) as store:
        assert await store.list_versions("tictactoe") == [1, 2]
        version, data = await store.latest_checkpoint("tictactoe")
        checkpoint = Checkpoint.from_bytes(data)
        assert (version, checkpoint.version, checkpoint.step) == (2, 2, 10)
        assert checkpoint.data_cursor > 0
        info, onnx = await store.get_model("tictactoe", max_bytes=1 << 24)
        assert info.version == 2 and info.step == 10

    published = [decode_event(await anext(events)) for _ in range(2)]
    assert [e.version for e in published] == [1, 2]
    assert all(isinstance(e, ModelPublished) and e.env_id == "tictactoe" for e in published)


def keeps_subnormals() -> bool:
    """Whether this thread computes with a subnormal float (1e-39) rather than zero."""
    return (torch.tensor([1e-39]) * 1.0).item() != 0.0


async def test_the_trainer_trains_and_exports_in_its_own_thread_with_subnormals_flushed(make_config):
    # Subnormal weights made the default hour's trainer 2.5 times slower per step
    # (bench/denormals.py); the flush is per thread, so where the work runs matters.
    config = make_config()
    await fill_replay(config)
    trainer = TrainerService(config, bus=MemoryBus())
    seen = []

    def watched(fn):
        def call(*args):
            seen.append((fn.__name__, threading.current_thread().name, keeps_subnormals()))
            return fn(*args)
        return call

    trainer._train = watched(trainer._train)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer_service, "export_onnx", watched(trainer_service.export_onnx))
        await asyncio.wait_for(trainer.run(cycles=1), 120)
    assert {name for name, _, _ in seen} == {"_train", "export_onnx"}
    assert all(thread.startswith("trainer-torch") and not kept for _, thread, kept in seen), seen


def test_a_short_first_cycle_then_every_steps_per_iteration():
    t = TrainingConfig(steps_per_iteration=1000, first_cycle_steps=200)
    assert [cycle_end(s, t) for s in (0, 199, 200, 1199, 1200)] == [200, 200, 1200, 1200, 2200]
    default = TrainingConfig(steps_per_iteration=1000)
    assert [cycle_end(s, default) for s in (0, 999, 1000)] == [1000, 1000, 2000]


async def test_the_first_cycle_publishes_after_first_cycle_steps(make_config):
    config = make_config(training={"steps_per_iteration": 5, "first_cycle_steps": 2})
    await fill_replay(config)
    trainer = TrainerService(config, bus=MemoryBus())
    await asyncio.wait_for(trainer.run(cycles=2), 120)
    async with open_model_store(config.storage) as store:
        assert [(await store.get_model("tictactoe", v, max_bytes=1 << 24))[0].step for v in (1, 2)] == [2, 7]


def test_the_learning_rate_falls_along_a_half_cosine_to_its_floor():
    t = TrainingConfig(learning_rate=0.01, learning_rate_decay_steps=100, learning_rate_floor=0.2)
    assert learning_rate(0, t) == pytest.approx(0.01)
    assert learning_rate(50, t) == pytest.approx(0.006)  # halfway between 0.01 and the floor 0.002
    assert learning_rate(25, t) > learning_rate(50, t) > learning_rate(75, t) > 0.002
    assert learning_rate(100, t) == pytest.approx(0.002)
    assert learning_rate(10_000, t) == pytest.approx(0.002)
    assert learning_rate(10_000, TrainingConfig(learning_rate=0.01)) == 0.01  # no decay steps: constant


async def test_a_resumed_trainer_trains_on_with_the_configs_rate_and_decay_not_the_checkpoints(make_config):
    config = make_config(training={"learning_rate": 0.01})
    await fill_replay(config)
    await asyncio.wait_for(TrainerService(config, bus=MemoryBus()).run(cycles=1), 120)

    changed = make_config(training={"learning_rate": 0.02, "learning_rate_decay_steps": 20,
                                    "learning_rate_floor": 0.5, "weight_decay": 0.003,
                                    "decoupled_weight_decay": True})
    resumed = TrainerService(changed, bus=MemoryBus())
    await asyncio.wait_for(resumed.run(cycles=1), 120)
    assert resumed.step == 10
    group = resumed.optimizer.param_groups[0]
    # Step 9 (the last one) ran at the schedule's rate for step 9: 0.02 falling towards 0.01.
    assert group["lr"] == pytest.approx(learning_rate(9, changed.training))
    assert 0.01 < group["lr"] < 0.02
    assert group["weight_decay"] == 0.003
    assert group["decoupled_weight_decay"] is True


async def test_a_version_stored_after_the_checkpoint_is_never_reused(make_config):
    config = make_config()
    await fill_replay(config)
    bus = MemoryBus()
    await asyncio.wait_for(TrainerService(config, bus=bus).run(cycles=1), 120)
    # As if a trainer crashed after uploading model 2 but before checkpointing it.
    async with open_model_store(config.storage) as store:
        await store.put_model("tictactoe", 2, b"orphan", step=99)
    trainer = TrainerService(config, bus=bus)
    await asyncio.wait_for(trainer.run(cycles=1), 120)
    assert trainer.version == 3
    async with open_model_store(config.storage) as store:
        _, orphan = await store.get_model("tictactoe", 2, max_bytes=1 << 20)
        assert orphan == b"orphan"  # not overwritten
        assert await store.list_versions("tictactoe") == [1, 2, 3]


async def test_waits_for_min_transitions_and_stops_cleanly(make_config):
    config = make_config(training={"min_transitions": 10_000})
    await fill_replay(config, games=3)
    stop = asyncio.Event()
    trainer = TrainerService(config, bus=MemoryBus())
    task = asyncio.create_task(trainer.run(stop))
    await asyncio.sleep(0.5)
    assert not task.done() and trainer.step == 0
    stop.set()
    await asyncio.wait_for(task, 30)
    assert trainer.version == 0


def test_window_keeps_the_newest_rows_and_mirrors_samples():
    window = ReplayWindow(TTT, size=10)
    parts = play_games(games=4)
    rows = parts[0].__class__.concat(parts)
    window._append(rows)
    assert window.filled == 10
    np.testing.assert_array_equal(np.sort(window.value), np.sort(rows.value[-10:]))
    obs, policy, value, _ = window.sample(500, np.random.default_rng(0))
    assert obs.shape == (500, 2, 3, 3) and obs.dtype == np.float32
    np.testing.assert_allclose(policy.sum(axis=1), 1, rtol=1e-5)
    # Mirrored samples exist: some sample equals a stored row flipped left-right.
    stored = {(o.tobytes()) for o in window.observation.astype(np.float32)}
    flipped = sum(o.tobytes() not in stored for o in obs)
    assert 0 < flipped < 500


def test_window_stops_sampling_uniform_positions_once_enough_model_positions_exist():
    parts = play_games(games=6)
    uniform = parts[0].__class__.concat(parts)  # played by the uniform evaluator (version 0)
    n = len(uniform)
    played = dataclasses.replace(uniform, model_version=np.full(n, 1, np.int32), value=np.full(n, 0.5, np.float32))
    window = ReplayWindow(TTT, size=2 * n, drop_uniform_after=n // 2)
    window._append(uniform)
    window._append(slice_rows(played, n // 2 - 1))
    assert window.sampled_positions == window.filled  # too few model positions yet: all sampled
    window._append(slice_rows(played, 1))
    assert window.sampled_positions == n // 2
    value = window.sample(400, np.random.default_rng(0)).value
    assert np.all(value == 0.5)  # only the model's rows
    plain = ReplayWindow(TTT, size=2 * n)  # the default: every row held
    plain._append(uniform)
    plain._append(played)
    assert plain.sampled_positions == 2 * n


def test_the_tapered_window_grows_as_a_power_of_the_positions_stored():
    taper = Taper(start=1000, exponent=0.75, growth=0.4)
    assert [taper.size(n) for n in (0, 10, 1000)] == [0, 10, 1000]  # every position, up to the start
    assert taper.size(16_000) == int(1000 * (1 + 0.4 * (16 ** 0.75 - 1) / 0.75))  # 4733
    assert taper.size(16_000) < taper.size(32_000) < taper.size(64_000) < 64_000
    assert Taper(start=1000, exponent=1.0, growth=1.0).size(50_000) == 50_000  # linear at scale 1: everything


def test_a_tapered_window_samples_only_its_newest_rows_and_grows_with_the_data():
    parts = play_games(games=12)
    rows = parts[0].__class__.concat(parts)
    n = len(rows)
    # Each row's value is its order of arrival, so a sample says which rows it came from.
    rows = dataclasses.replace(rows, value=np.arange(n, dtype=np.float32), model_version=np.ones(n, np.int32))
    taper = Taper(start=n // 8, exponent=0.5, growth=0.5)
    window = ReplayWindow(TTT, size=n, taper=taper)
    window._append(slice_rows(rows, n // 8))
    assert window.span == n // 8 == window.sampled_positions  # up to the start: every row
    window._append(dataclasses.replace(rows, **{k: v[n // 8:] for k, v in rows.__dict__.items()}))
    span = taper.size(n)
    assert window.filled == n and n // 8 < window.span == span < n
    values = window.sample(2000, np.random.default_rng(0)).value
    assert values.min() >= n - span and len(np.unique(values)) > span // 2  # the newest span rows, all of them
    # Past the ring's end: the newest rows are found across the wrap, and the window is capped at its size.
    small = ReplayWindow(TTT, size=n // 2, taper=Taper(start=n // 8, exponent=1.0, growth=1.0))
    small._append(rows)
    small._append(slice_rows(dataclasses.replace(rows, value=np.arange(n, n + n // 8, dtype=np.float32)), n // 8))
    assert small.span == n // 2
    assert small.sample(2000, np.random.default_rng(0)).value.min() >= n + n // 8 - n // 2


def test_a_tapered_window_drops_uniform_positions_among_its_newest_rows():
    parts = play_games(games=8)
    rows = parts[0].__class__.concat(parts)
    n = len(rows)
    versions = np.where(np.arange(n) % 2 == 0, 0, 1).astype(np.int32)  # alternating uniform and model rows
    rows = dataclasses.replace(rows, value=np.arange(n, dtype=np.float32), model_version=versions)
    window = ReplayWindow(TTT, size=n, drop_uniform_after=4, taper=Taper(start=n // 4, exponent=1.0, growth=0.5))
    window._append(rows)
    span = window.span
    assert n // 4 < span < n and window.sampled_positions == len([i for i in range(n - span, n) if i % 2])
    values = window.sample(500, np.random.default_rng(0)).value
    assert values.min() >= n - span and np.all(values % 2 == 1)


def test_duplicates_merge_into_one_position_with_averaged_targets():
    a = TTT.num_actions
    observation = np.zeros((5, 2, 3, 3), np.uint8)
    observation[3:, 0, 1, 1] = 1  # rows 0-2: one position; rows 3-4: another
    policy = np.zeros((5, a), np.float32)
    policy[0, 0] = policy[1, 1] = policy[2, 2] = policy[3, 3] = policy[4, 4] = 1
    value = np.array([1, -1, 0.5, 0.25, 0.75], np.float32)
    weight = np.array([1, 1, 0, 0, 0], np.float32)  # row 2 and the second position: fast searches
    merged = merge_duplicates(np.arange(5), observation, policy, value, weight)
    assert sorted(merged.rows.tolist()) in ([0, 3], [1, 3], [2, 3], [0, 4], [1, 4], [2, 4])
    first = int(np.flatnonzero(merged.rows < 3)[0])
    second = 1 - first
    np.testing.assert_allclose(merged.policy[first], [0.5, 0.5] + [0] * (a - 2))  # the fast search's left out
    np.testing.assert_allclose(merged.value, [0.5 / 3, 0.5] if first == 0 else [0.5, 0.5 / 3], rtol=1e-6)
    assert merged.policy_weight[first] == 1 and merged.policy_weight[second] == 0


def test_averaging_duplicates_samples_distinct_positions_uniformly():
    parts = play_games(games=12)
    rows = parts[0].__class__.concat(parts)
    distinct = np.unique(rows.observation.reshape(len(rows), -1), axis=0)
    opening = rows.observation[rows.ply == 0][0]  # every game's first position
    copies = int(np.all(rows.observation == opening, axis=(1, 2, 3)).sum())
    assert copies == 12
    for average, expected in ((False, copies / len(rows)), (True, 1 / len(distinct))):
        window = ReplayWindow(TTT, size=len(rows), average_duplicates=average)
        window._append(rows)
        batch = window.sample(20_000, np.random.default_rng(0))
        # The opening is its own mirror image, so flips do not hide it.
        share = np.all(batch.observation == opening.astype(np.float32), axis=(1, 2, 3)).mean()
        assert abs(share - expected) < 0.3 * expected, (average, share, expected)


def test_the_value_target_mixes_the_result_with_the_search_value():
    rows = play_games(games=2)[0]
    rows = rows.__class__(**{**rows.__dict__, "value": np.ones(len(rows), np.float32),
                             "search_value": np.full(len(rows), -1.0, np.float32)})
    for weight, target in ((0.0, 1.0), (0.25, 0.5), (1.0, -1.0)):
        window = ReplayWindow(TTT, size=len(rows), search_value_weight=weight)
        window._append(rows)
        np.testing.assert_allclose(window.sample(50, np.random.default_rng(0)).value, target)


def test_rows_of_fast_searches_train_the_value_but_not_the_policy():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    obs = rng.integers(0, 2, (8, 2, 3, 3)).astype(np.float32)
    policy = rng.dirichlet(np.ones(9), 8).astype(np.float32)
    value = rng.uniform(-1, 1, 8).astype(np.float32)
    weight = np.array([1, 0, 1, 0, 1, 1, 0, 1], np.float32)
    other = policy.copy()
    other[weight == 0] = rng.dirichlet(np.ones(9), 3)  # other targets where the weight is 0

    def losses(policy_target, policy_weight):
        net = PolicyValueNet(TTT.obs_shape, TTT.num_actions, blocks=1, channels=4)
        net.load_state_dict(start)
        opt = torch.optim.SGD(net.parameters(), lr=0.0)
        return train_step(net, opt, Batch(obs, policy_target, value, policy_weight), torch.device("cpu"))

    start = PolicyValueNet(TTT.obs_shape, TTT.num_actions, blocks=1, channels=4).state_dict()
    weighted = losses(policy, weight)
    assert losses(other, weight) == weighted  # the value-only rows' policies count for nothing
    assert losses(other, np.ones(8, np.float32)).policy != weighted.policy  # with weight 1 they do
    assert weighted.value == losses(policy, np.ones(8, np.float32)).value  # every row's value counts


def slice_rows(rows, count):
    return rows.__class__(**{k: v[:count] for k, v in rows.__dict__.items()})


def test_checkpoint_round_trip_uses_weights_only():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    data = Checkpoint(model=model.state_dict(), optimizer=opt.state_dict(), step=7, version=3, data_cursor=42).to_bytes()
    back = Checkpoint.from_bytes(data)
    assert (back.step, back.version, back.data_cursor) == (7, 3, 42)
    assert torch.equal(back.model["weight"], model.weight.detach())


def test_the_average_decay_warms_up_from_the_first_steps():
    assert [warmed_up_decay(0.998, n) for n in (0, 1, 90)] == [0.1, 2 / 11, 0.91]
    assert warmed_up_decay(0.998, 10_000) == 0.998


def test_an_average_decay_of_one_or_more_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="average_decay"):
        load_config(environ={"CARTRIDGE_TRAINING_AVERAGE_DECAY": "1.0"})
    with pytest.raises(ValueError, match="decay must be in"):
        WeightAverage(torch.nn.Linear(2, 2), 1.0)


def test_the_weight_average_moves_by_one_minus_the_decay_and_averages_batchnorm_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    average = WeightAverage(model, decay=0.5)
    average.update(model)  # the first update copies
    first = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(average.module.parameters(), first))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model.train()
    model(torch.randn(8, 3))  # moves the running statistics and counts a batch
    average.update(model)  # second update: decay min(0.5, 2/11) = 2/11
    kept = 2 / 11
    for a, old, new in zip(average.module.parameters(), first, model.parameters()):
        assert torch.allclose(a, kept * old + (1 - kept) * new)
    bn, bn_avg = model[1], average.module[1]
    assert torch.allclose(bn_avg.running_mean, (1 - kept) * bn.running_mean)  # it started at 0
    assert bn_avg.num_batches_tracked == bn.num_batches_tracked  # counted, not averaged
    assert average.updates == 2


async def test_with_average_decay_the_published_model_is_the_average_and_resumes_with_it(make_config):
    config = make_config(training={"average_decay": 0.9, "learning_rate": 0.05})
    await fill_replay(config)
    trainer = TrainerService(config, bus=MemoryBus())
    await asyncio.wait_for(trainer.run(cycles=1), 120)
    obs = TTT.observe(TTT.play(TTT.initial_boards(2), np.array([0, 4]))[0]).astype(np.float32)
    async with open_model_store(config.storage) as store:
        _, onnx = await store.get_model("tictactoe", 1, max_bytes=1 << 24)
        _, data = await store.latest_checkpoint("tictactoe")
    published, _ = OnnxEvaluator.from_bytes(onnx, TTT, version=1)(obs)
    with torch.no_grad():
        averaged = trainer.average.module.eval()(torch.from_numpy(obs))[0].numpy()
        trained = trainer.model.eval()(torch.from_numpy(obs))[0].numpy()
    assert np.allclose(published, averaged, atol=1e-4)
    assert not np.allclose(published, trained, atol=1e-3)  # 5 steps at a high rate move the weights

    checkpoint = Checkpoint.from_bytes(data)
    assert int(checkpoint.average["n_averaged"]) == 5
    resumed = TrainerService(config, bus=MemoryBus())
    await asyncio.wait_for(resumed.run(cycles=1), 120)
    assert resumed.average.updates == 10  # carried on from the checkpoint's average
