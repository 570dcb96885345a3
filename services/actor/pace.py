"""The trainer's word on whether self-play should wait.

With `training.samples_per_position` set, the trainer announces its pace every few seconds
(`TrainerProgress`): `pause_actors` while the stored positions run ahead of what it will
sample. Self-play waits at this gate between two search steps. A pause lapses by itself
after `LAPSE_AFTER` missed announcements: a trainer that stopped or lost its broker
connection must not stall the actors.
"""

from __future__ import annotations

import asyncio
import logging

from shared.messages import TrainerProgress

log = logging.getLogger(__name__)

LAPSE_AFTER = 3  # announcement intervals without word before a pause lapses


class TrainerPace:
    def __init__(self, env_id: str):
        self.env_id = env_id
        self._open = asyncio.Event()
        self._open.set()
        self._lapse: asyncio.TimerHandle | None = None
        self.pauses = 0  # times self-play was paused

    @property
    def paused(self) -> bool:
        return not self._open.is_set()

    def observe(self, progress: TrainerProgress) -> None:
        if progress.env_id != self.env_id:
            return
        if self._lapse is not None:
            self._lapse.cancel()
            self._lapse = None
        if not progress.pause_actors:
            self._resume("the trainer caught up")
            return
        if not self.paused:
            self.pauses += 1
            log.info("self-play paused: the trainer has %d samples for %d new positions and asks actors to wait",
                     progress.samples, progress.positions)
        self._open.clear()
        self._lapse = asyncio.get_running_loop().call_later(
            LAPSE_AFTER * progress.interval_s, self._resume, "no word from the trainer")

    def _resume(self, why: str) -> None:
        if self.paused:
            log.info("self-play resumed: %s", why)
        self._open.set()

    async def wait(self, stop: asyncio.Event) -> None:
        """Return when self-play may go on, or `stop` is set."""
        if not self.paused:
            return
        opened = asyncio.ensure_future(self._open.wait())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((opened, stopped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            opened.cancel()
            stopped.cancel()
