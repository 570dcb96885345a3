"""The message bus: RabbitMQ in a deployment, in-process for `cartridge up` and unit tests."""

from shared.bus.base import BacklogFull, Bus, Delivery
from shared.bus.memory import MemoryBus
from shared.bus.rabbitmq import RabbitBus

__all__ = ["BacklogFull", "Bus", "Delivery", "MemoryBus", "RabbitBus"]
