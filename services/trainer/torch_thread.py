"""The trainer's one thread for torch work, with subnormal floats flushed to zero.

Weight decay pulls the weights that stop learning (a channel whose gradients are
nil) towards zero, down through the subnormal floats (below 1.2e-38), where a CPU
multiplies tens of times slower. The default config's hour slowed its trainer from 4.1
steps/s to 1.7 this way: at step 12,000 the last residual block held 1,306 subnormal
weights and a step took 2.5 times as long as with them flushed (`bench/denormals.py`).
Flushed, they count as the zeros they are in effect.

The flush is a mode of each thread (a CPU control register) that a new thread inherits
from the thread that starts it. So the trainer sets it on the thread that builds it,
whose later threads (torch's intra-op workers among them) inherit it, and runs all its
torch work in one thread of its own that sets it first: a worker thread started before
the trainer was built, from a thread without it, never trains.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")


def flush_denormals() -> bool:
    """Treat subnormal floats as zero in this thread and the threads it starts; False
    where the CPU cannot."""
    return torch.set_flush_denormal(True)


class TorchThread:
    """One thread, subnormals flushed, that runs the trainer's torch calls in turn."""

    def __init__(self) -> None:
        if not flush_denormals():  # on the building thread: torch's workers may start from it
            log.warning("this CPU cannot flush subnormal floats to zero: training slows down "
                        "as weight decay drives unused weights towards zero")
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="trainer-torch", initializer=flush_denormals)

    async def run(self, fn: Callable[..., T], *args) -> T:
        """`fn(*args)` in the torch thread (after whatever it is running)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        """Let the thread end once its current call returns."""
        self._executor.shutdown(wait=False)
