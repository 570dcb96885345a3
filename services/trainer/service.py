"""The trainer service: learn from the replay window, publish every cycle's model.

Lifecycle: connect to the replay store, model store and broker; resume from the newest
checkpoint (weights, optimizer, step, version); wait until the replay holds
`min_transitions`; then per cycle:
  refresh the window -> steps to the cycle's end (`first_cycle_steps`, then every
  `steps_per_iteration`) -> export ONNX (of the weights' moving average with
  `average_decay`) -> upload it as the next version -> checkpoint -> publish a
  model-published event.
Training, export and checkpoint serialisation run in the trainer's own torch thread,
subnormal floats flushed to zero (`torch_thread.py`). Versions only go up: the next one
is above both the checkpoint's and the store's newest, and a stored version is never
overwritten.

With `samples_per_position` set, training is paced by the data (`pace.py`): the trainer
waits when it has drawn its share of samples for the positions stored so far, and
announces its pace every `PACE_EVERY_S` seconds so that actors pause when the stored
positions run too far ahead of it.

The window is not in the checkpoint: a resumed trainer loads the newest `window_size`
positions afresh, i.e. what its window held plus whatever was stored while it was away,
as a trainer that never stopped would hold them. The checkpoint's data cursor (the replay
id the window had reached) only says how far that was; it is logged on resume.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import torch

from services.trainer.average import WeightAverage
from services.trainer.export import export_onnx
from services.trainer.learner import Checkpoint, StepLosses, train_step
from services.trainer.network import build_network
from services.trainer.pace import SamplePace
from services.trainer.schedule import learning_rate, set_learning_rate
from services.trainer.torch_thread import TorchThread
from services.trainer.window import ReplayWindow, Taper
from shared.bus import BusUnavailable, EventPublisher, open_bus
from shared.config import Config, TrainingConfig
from shared.games import get_game
from shared.messages import ModelPublished, TrainerProgress, encode_event
from shared.metrics.export import exported
from shared.metrics.families import recorder
from shared.model_store import ModelInfo, ModelStore, StoreUnavailable, VersionExists, open_model_store
from shared.replay import Replay, ReplayUnavailable, open_replay
from shared.retry import Stopped, pause, retry
from shared.status import Lifecycle, TrainerStatus, instance_name

log = logging.getLogger(__name__)

WAIT_FOR_DATA_S = 2.0  # how often to look at the replay size while below min_transitions
REFRESH_EVERY_STEPS = 100  # pull new rows into the window this often within a cycle
PACE_EVERY_S = 5.0  # how often the trainer announces its pace (with samples_per_position)
LAPSE_INTERVALS = 2  # an announcement expires unread after this many intervals
WAIT_FOR_POSITIONS_S = 1.0  # how often to look for new positions while the pace holds training


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device = 'cuda' but no CUDA device is available")
    return torch.device(name)


def cycle_end(step: int, t: TrainingConfig) -> int:
    """The step at which the cycle containing `step` ends (its model is published):
    `first_cycle_steps` (if set), then every `steps_per_iteration` after it."""
    first = t.first_cycle_steps or t.steps_per_iteration
    if step < first:
        return first
    return first + ((step - first) // t.steps_per_iteration + 1) * t.steps_per_iteration


def optimizer_settings(t: TrainingConfig) -> dict:
    """The optimizer's settings that the config decides, also over a resumed checkpoint's
    (the learning rate follows its schedule, set before every step)."""
    return {"weight_decay": t.weight_decay, "decoupled_weight_decay": t.decoupled_weight_decay}


class TrainerService:
    def __init__(self, config: Config, *, bus: EventPublisher | None = None, store: ModelStore | None = None,
                 replay: Replay | None = None):
        """`bus`, `store` and `replay` default to what `config` names."""
        self.config = config
        self.game = get_game(config.common.env_id)
        self.name = instance_name()
        self.bus = bus or open_bus(config.broker, name="trainer")
        self.store = store or open_model_store(config.storage)
        self.replay = replay or open_replay(config.storage, self.game)
        self.device = pick_device(config.training.device)
        self.torch = TorchThread()  # before any torch work: its threads inherit the flushed subnormals
        torch.set_num_threads(config.training.threads)
        self.model = build_network(self.game, config.network).to(self.device)
        t = config.training
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=t.learning_rate, **optimizer_settings(t))
        # What is published: the weights' moving average, or the weights themselves.
        self.average = WeightAverage(self.model, t.average_decay) if t.average_decay else None
        self.window = ReplayWindow(self.game, t.window_size,
                                   drop_uniform_after=t.min_transitions if t.drop_uniform_positions else 0,
                                   search_value_weight=t.search_value_weight,
                                   taper=Taper(t.window_taper_start, t.window_taper_exponent, t.window_taper_growth)
                                   if t.window_taper_start else None,
                                   average_duplicates=t.average_duplicates)
        self.pace = SamplePace(t.samples_per_position, t.position_lead)
        self.rng = np.random.default_rng()
        self.step = 0
        self.steps_this_run = 0
        self.version = 0
        self.cycles_done = 0
        self.published = 0  # versions published by this run
        self.last_losses: StepLosses | None = None
        self.replay_size = 0  # positions in the replay buffer, as last seen
        self.waiting_for_positions = False  # the pace holds training until more are stored
        self._lifecycle = Lifecycle()

    def status(self) -> TrainerStatus:
        losses = self.last_losses
        return TrainerStatus(
            name=self.name, state=self._lifecycle.state, step=self.step, version=self.version,
            replay_size=self.replay_size, window_size=self.window.span,
            loss=losses.total if losses else None, policy_loss=losses.policy if losses else None,
            value_loss=losses.value if losses else None,
            samples=self.pace.samples,
            positions_loaded=self.window.total_loaded, steps_this_run=self.steps_this_run,
            published=self.published, learning_rate=self.optimizer.param_groups[0]["lr"],
            window_oldest_version=self.window.oldest_version, window_newest_version=self.window.newest_version,
            waiting_for_positions=self.waiting_for_positions, actors_paused=self.pace.actors_ahead,
        )

    async def run(self, stop: asyncio.Event | None = None, cycles: int | None = None) -> None:
        """Train until `stop` is set, or for `cycles` cycles."""
        stop = stop or asyncio.Event()
        try:
            await self._run(stop, cycles)
        finally:
            self.torch.close()

    async def _run(self, stop: asyncio.Event, cycles: int | None) -> None:
        cfg = self.config
        async with self._lifecycle, exported(self), self.bus, self.store as store, self.replay as replay:
            await self._resume(store)
            self._lifecycle.started(stop)
            try:
                await self._wait_for_data(replay, stop)
            except Stopped:
                return
            async with asyncio.TaskGroup() as tasks:
                announcing = tasks.create_task(self._announce_pace()) if self.pace.target else None
                try:
                    while not stop.is_set() and (cycles is None or self.cycles_done < cycles):
                        await self._cycle(replay, stop)
                        if stop.is_set() and self.step != cycle_end(self.step - 1, cfg.training):
                            break  # interrupted mid-cycle: the last checkpoint stands
                        await self._publish(store, stop)
                        self.cycles_done += 1
                except Stopped:
                    pass  # asked to stop while a dependency was away: the last checkpoint stands
                finally:
                    if announcing is not None:
                        announcing.cancel()

    async def _resume(self, store) -> None:
        env_id = self.game.env_id
        found = await store.latest_checkpoint(env_id)
        if found is not None:
            _, data = found
            checkpoint = Checkpoint.from_bytes(data)
            self.model.load_state_dict(checkpoint.model)
            self.optimizer.load_state_dict(checkpoint.optimizer)
            self.step, self.version = checkpoint.step, checkpoint.version
            # The config, not the checkpoint, says how to train on: a changed weight decay
            # or learning rate applies at once (the rate is set again before every step).
            for group in self.optimizer.param_groups:
                group.update(optimizer_settings(self.config.training))
            set_learning_rate(self.optimizer, learning_rate(self.step, self.config.training))
            # A checkpoint from before averaging was switched on has none: the average's
            # first update then starts from the resumed weights.
            if self.average is not None and checkpoint.average is not None:
                self.average.load_state_dict(checkpoint.average)
            log.info("resumed from checkpoint: model %d, step %d (its window had read the replay up to id %d; "
                     "the window now loads the newest positions)", self.version, self.step, checkpoint.data_cursor)
        # A version may have been claimed or stored after the last checkpoint (a crash in
        # between, even half-way through an upload): never reuse its number.
        newest = max(await store.list_versions(env_id), default=0)
        if newest > self.version:
            log.info("store already has model %d; next version is %d", newest, newest + 1)
            self.version = newest

    async def _wait_for_data(self, replay, stop: asyncio.Event) -> None:
        needed = self.config.training.min_transitions
        while True:
            self.replay_size = await retry(lambda: replay.count(self.game.env_id), what="counting the replay",
                                           errors=ReplayUnavailable, stop=stop)
            if self.replay_size >= needed:
                return
            log.info("waiting for data: %d of %d positions in the replay buffer", self.replay_size, needed)
            await pause(WAIT_FOR_DATA_S, stop)

    async def _cycle(self, replay, stop: asyncio.Event) -> None:
        t = self.config.training
        start, start_step = time.monotonic(), self.step
        end_step = cycle_end(self.step, t)
        while self.step < end_step and not stop.is_set():
            loaded = await retry(lambda: self.window.refresh(replay), what="refreshing the window",
                                 errors=ReplayUnavailable, stop=stop)
            self.replay_size = max(self.replay_size, self.window.last_id)  # ids count rows
            # A resumed trainer's first load is old data: it pays for a start, not for a cycle.
            self.pace.positions += min(loaded.first, t.min_transitions) + loaded.new
            chunk = min(REFRESH_EVERY_STEPS, end_step - self.step)
            allowed = self.pace.steps_allowed(t.batch_size)
            self.waiting_for_positions = allowed == 0
            if allowed == 0:
                await pause(WAIT_FOR_POSITIONS_S, stop)
                continue
            if allowed is not None:
                chunk = min(chunk, allowed)
            self.last_losses = await self.torch.run(self._train, chunk)
            log.debug("refreshed window (+%d rows), step %d", loaded.first + loaded.new, self.step)
        elapsed = time.monotonic() - start
        losses = self.last_losses
        log.info(
            "cycle done: step %d (%.1f steps/s, %.1f samples per new position), loss %.3f (policy %.3f, "
            "value %.3f), window %d rows",
            self.step, (self.step - start_step) / max(elapsed, 1e-9), self.pace.ratio,
            losses.total if losses else float("nan"), losses.policy if losses else float("nan"),
            losses.value if losses else float("nan"), self.window.span,
        )

    def _train(self, steps: int) -> StepLosses:
        losses = None
        t = self.config.training
        for _ in range(steps):
            set_learning_rate(self.optimizer, learning_rate(self.step, t))
            batch = self.window.sample(t.batch_size, self.rng)
            losses = train_step(self.model, self.optimizer, batch, self.device)
            if self.average is not None:
                self.average.update(self.model)
            self.step += 1
            self.steps_this_run += 1
            self.pace.samples += t.batch_size
        return losses

    async def _announce_pace(self) -> None:
        """Tell the actors every `PACE_EVERY_S` whether to pause (best effort: an actor
        that hears nothing plays on)."""
        while True:
            progress = TrainerProgress(env_id=self.game.env_id, samples=self.pace.samples,
                                       positions=self.pace.positions, pause_actors=self.pace.actors_ahead,
                                       interval_s=PACE_EVERY_S)
            try:
                # Stale soon after the next is due: never queued up for an evaluator that is away.
                await self.bus.publish_event(encode_event(progress), expires_s=LAPSE_INTERVALS * PACE_EVERY_S)
            except BusUnavailable as exc:
                log.debug("pace not announced: %s", exc)
            await asyncio.sleep(PACE_EVERY_S)

    async def _put_model(self, store, version: int, onnx_bytes: bytes) -> ModelInfo:
        """Store the model as `version`, or as the next free number if another writer
        took that one (versions are claimed once and never overwritten). Retrying the
        same bytes after a lost reply completes the earlier upload (see `put_model`)."""
        env_id = self.game.env_id
        while True:
            try:
                return await store.put_model(
                    env_id, version, onnx_bytes, step=self.step,
                    metadata={"blocks": str(self.config.network.blocks),
                              "channels": str(self.config.network.channels), **self._loss_metadata()},
                )
            except VersionExists as exc:
                version = max(max(await store.list_versions(env_id), default=0), version) + 1
                log.warning("%s; storing this model as version %d instead", exc, version)

    def _loss_metadata(self) -> dict[str, str]:
        """The last step's losses, kept with the model: the web page's loss curve."""
        losses = self.last_losses
        if losses is None:
            return {}
        return {"loss": f"{losses.total:.6g}", "policy_loss": f"{losses.policy:.6g}", "value_loss": f"{losses.value:.6g}"}

    async def _publish(self, store, stop: asyncio.Event) -> None:
        """Export, upload, checkpoint, announce. Outages are retried until `stop` (the
        store and the bus log them)."""
        metrics = recorder()
        started = time.monotonic()
        published = self.average.module if self.average is not None else self.model
        onnx_bytes = await self.torch.run(export_onnx, published)
        exported_at = time.monotonic()
        info = await retry(lambda: self._put_model(store, self.version + 1, onnx_bytes),
                           what="storing the model", errors=StoreUnavailable, stop=stop)
        if metrics is not None:
            metrics.trainer.export_seconds.observe(exported_at - started)
            metrics.trainer.upload_seconds.labels(object="model").observe(time.monotonic() - exported_at)
        version = info.version
        checkpoint = Checkpoint(
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            step=self.step, version=version, data_cursor=self.window.last_id,
            average=self.average.state_dict() if self.average is not None else None,
        )
        if (self.cycles_done + 1) % self.config.training.checkpoint_every == 0:
            data = await self.torch.run(checkpoint.to_bytes)
            started = time.monotonic()
            await retry(lambda: store.put_checkpoint(self.game.env_id, version, data),
                        what="storing the checkpoint", errors=StoreUnavailable, stop=stop)
            if metrics is not None:
                metrics.trainer.upload_seconds.labels(object="checkpoint").observe(time.monotonic() - started)
            pruned = await retry(lambda: store.prune_checkpoints(self.game.env_id, self.config.storage.keep_checkpoints),
                                 what="deleting old checkpoints", errors=StoreUnavailable, stop=stop)
            if pruned:
                log.debug("deleted checkpoints %s (keeping the newest %d)", pruned, self.config.storage.keep_checkpoints)
        self.version = version
        event = ModelPublished(
            env_id=info.env_id, version=info.version, key=info.key, sha256=info.sha256,
            size=info.size, step=info.step,
        )
        try:
            await retry(lambda: self.bus.publish_event(encode_event(event)), what="announcing the model",
                        errors=BusUnavailable, stop=stop)
        except Stopped:
            # The model is stored either way; actors that miss the event pick it up at start.
            log.warning("stopped before model %d was announced; actors load it when they start", version)
            return
        self.published += 1
        log.info("published model %d (step %d, %d bytes)", version, self.step, info.size)
