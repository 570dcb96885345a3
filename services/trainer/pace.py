"""Samples per new position, held to a target (two-sided, like Reverb's
`SampleToInsertRatio`).

The trainer counts the new positions it has seen and the samples it has drawn since it
started. It may draw up to `target` samples per position; past that it waits for more
data. The other side is the actors': when the positions run ahead of what the trainer
will sample by more than `lead`, they should pause (the trainer announces `actors_ahead`
on the events exchange). Without a target the trainer never waits and actors never pause.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SamplePace:
    target: float
    """Samples per new position (0: no target)."""
    lead: int
    """Positions the data may run ahead of the trainer before actors should pause."""
    positions: int = 0
    """New positions counted since the start."""
    samples: int = 0
    """Samples drawn since the start (the trainer's status reports this count)."""

    def steps_allowed(self, batch_size: int) -> int | None:
        """Training steps of `batch_size` that the positions so far pay for; None: no limit."""
        if not self.target:
            return None
        return max(0, int((self.positions * self.target - self.samples) // batch_size))

    @property
    def actors_ahead(self) -> bool:
        """The positions run ahead of the samples by more than `lead` positions."""
        return bool(self.target) and self.positions * self.target - self.samples > self.lead * self.target

    @property
    def ratio(self) -> float:
        """Samples per new position so far."""
        return self.samples / self.positions if self.positions else 0.0
