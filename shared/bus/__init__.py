"""The message bus: RabbitMQ in a deployment, in-process for `cartridge up` and unit tests."""

from shared.bus.base import Bus, Delivery
from shared.bus.memory import MemoryBus
from shared.bus.rabbitmq import RabbitBus

__all__ = ["Bus", "Delivery", "MemoryBus", "RabbitBus"]
