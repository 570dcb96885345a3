"""`cartridge reload [--version N]`: ask every actor to load a model now.

Publishes a `reload` control event on the models exchange; each actor receives it on its
own queue. Without `--version` actors load the newest model; with it, exactly that
version (a rollback). The same JSON body can be published by hand from the RabbitMQ
management UI (see the README).
"""

from __future__ import annotations

import asyncio

from shared.bus import RabbitBus
from shared.config import Config
from shared.messages import ReloadRequest, encode_event
from shared.service import base_parser, load_command_config


async def publish_reload(config: Config, version: int | None) -> ReloadRequest:
    event = ReloadRequest(env_id=config.common.env_id, version=version)
    async with RabbitBus(config.broker, name="cartridge reload") as bus:
        await bus.publish_event(encode_event(event))
    return event


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("cartridge reload", __doc__.splitlines()[0])
    parser.add_argument("--version", type=int, help="model version to load (default: the newest)")
    args = parser.parse_args(argv)
    config = load_command_config(parser, args)
    event = asyncio.run(publish_reload(config, args.version))
    print(f"published {encode_event(event).decode()} to exchange {config.broker.models_exchange!r}")
    return 0
