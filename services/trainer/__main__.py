"""`cartridge trainer` / `python -m services.trainer`: train and publish models until stopped."""

import sys

from services.trainer.service import TrainerService
from shared.heartbeat import HeartbeatSender
from shared.metrics.endpoint import serve_metrics
from shared.service import base_parser, run_service


async def serve(config, args, stop) -> None:
    service = TrainerService(config)
    # /metrics, /healthz, /readyz; and heartbeats, so `cartridge status` sees it
    async with serve_metrics(config.metrics), HeartbeatSender(config, service.status):
        await service.run(stop, cycles=args.cycles)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("cartridge trainer", "Train from the replay buffer; publish a model every cycle.")
    parser.add_argument("--cycles", type=int, help="run this many cycles, then exit (default: forever)")
    return run_service(serve, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
