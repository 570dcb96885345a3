"""The message bus: RabbitMQ in a deployment, in-process for `cartridge up` and unit tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.bus.base import (
    ActorBus, BacklogFull, Bus, BusUnavailable, Delivery, EventPublisher, EventSubscriber, TransitionConsumer,
    TransitionPublisher,
)
from shared.bus.memory import MemoryBus

if TYPE_CHECKING:
    from shared.bus.rabbitmq import RabbitBus
    from shared.config import BrokerConfig


def open_bus(broker: BrokerConfig, *, name: str) -> RabbitBus:
    """The RabbitMQ bus `broker` names, not yet entered (`async with` it); `name` is
    the connection's name in RabbitMQ's management UI."""
    from shared.bus.rabbitmq import RabbitBus

    return RabbitBus(broker, name=name)


def __getattr__(name: str):
    # `from shared.bus import RabbitBus` imports aio-pika only when it is asked for.
    if name == "RabbitBus":
        from shared.bus.rabbitmq import RabbitBus

        return RabbitBus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ActorBus", "BacklogFull", "Bus", "BusUnavailable", "Delivery", "EventPublisher", "EventSubscriber", "MemoryBus",
           "RabbitBus", "TransitionConsumer", "TransitionPublisher", "open_bus"]
