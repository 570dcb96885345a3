"""`cartridge actor` / `python -m services.actor`: run self-play until stopped."""

import sys

from services.actor.service import ActorService
from shared.heartbeat import HeartbeatSender
from shared.metrics.endpoint import serve_metrics
from shared.service import base_parser, run_service


async def serve(config, args, stop) -> None:
    service = ActorService(config)
    # /metrics, /healthz, /readyz; and heartbeats, so `cartridge status` sees it
    async with serve_metrics(config.metrics), HeartbeatSender(config, service.status):
        await service.run(stop)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("cartridge actor", "Self-play with the newest model; publish games to RabbitMQ.")
    parser.add_argument("--episodes", type=int, help="finish this many games, then exit (actor.max_episodes)")
    parser.add_argument("--actor-id", help="unique actor name (actor.actor_id)")
    flags = lambda a: {"actor": {k: v for k, v in (("max_episodes", a.episodes), ("actor_id", a.actor_id)) if v is not None}}
    return run_service(serve, parser, argv, flags)


if __name__ == "__main__":
    sys.exit(main())
