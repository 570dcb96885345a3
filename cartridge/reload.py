"""`cartridge reload [--version N] [--hold]`: ask every actor to load a model now.

Publishes a `reload` control event on the models exchange; each actor receives it on its
own queue. Without `--version` actors load the served model (the held one, if any, else
the newest); with it, exactly that version (a rollback). `--hold` keeps actors on it,
ignoring newer models, until a reload without `--hold` (which ends any hold, the
evaluator's included). The serving pointer in the model store is written first, so an
actor starting later serves the same. The same JSON body can be published by hand from
the RabbitMQ management UI (see the README); that does not move the pointer.
"""

from __future__ import annotations

import asyncio

from shared.bus import RabbitBus
from shared.config import Config
from shared.messages import ReloadRequest, encode_event
from shared.model_store import ServingPointer, open_model_store
from shared.service import base_parser, load_command_config


async def publish_reload(config: Config, version: int | None, hold: bool = False) -> ReloadRequest:
    env = config.common.env_id
    event = ReloadRequest(env_id=env, version=version, hold=hold)
    async with open_model_store(config.storage) as store:
        if hold or await store.serving(env) is not None:
            if version is None:
                newest = await store.latest(env)
                version = newest.version if newest is not None else 0
            await store.put_serving(env, ServingPointer(version=version, hold=hold, reason="cartridge reload"))
    async with RabbitBus(config.broker, name="cartridge reload") as bus:
        await bus.publish_event(encode_event(event))
    return event


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("cartridge reload", __doc__.splitlines()[0])
    parser.add_argument("--version", type=int, help="model version to load (default: the served one)")
    parser.add_argument("--hold", action="store_true", help="keep serving it, ignoring newer models")
    args = parser.parse_args(argv)
    config = load_command_config(parser, args)
    if args.hold and args.version is None:
        parser.error("--hold needs --version")
    event = asyncio.run(publish_reload(config, args.version, args.hold))
    print(f"published {encode_event(event).decode()} to exchange {config.broker.models_exchange!r}")
    return 0
