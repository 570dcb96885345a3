"""`cartridge trainer` / `python -m services.trainer`: train and publish models until stopped."""

import sys

from services.trainer.service import TrainerService
from shared.heartbeat import HeartbeatSender
from shared.service import base_parser, run_service


async def serve(config, args, stop) -> None:
    service = TrainerService(config)
    async with HeartbeatSender(config, service.status):  # `cartridge status` sees it
        await service.run(stop, cycles=args.cycles)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("cartridge trainer", "Train from the replay buffer; publish a model every cycle.")
    parser.add_argument("--cycles", type=int, help="run this many cycles, then exit (default: forever)")
    return run_service(serve, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
