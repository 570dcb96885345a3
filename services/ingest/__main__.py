"""`cartridge ingest` / `python -m services.ingest`: store published games until stopped."""

import sys

from services.ingest.service import IngestService
from shared.heartbeat import HeartbeatSender
from shared.metrics.endpoint import serve_metrics
from shared.service import base_parser, run_service


async def serve(config, args, stop) -> None:
    service = IngestService(config)
    # /metrics, /healthz, /readyz; and heartbeats, so `cartridge status` sees it
    async with serve_metrics(config.metrics), HeartbeatSender(config, service.status):
        await service.run(stop, burst=args.burst)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("cartridge ingest", "Consume transition batches; COPY them into the replay buffer.")
    parser.add_argument("--burst", action="store_true", help="exit once the queue is empty and all is stored")
    return run_service(serve, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
