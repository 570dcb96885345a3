"""`cartridge evaluator` / `python -m services.evaluator`: rate every published model."""

import sys

from services.evaluator.service import EvaluatorService
from shared.heartbeat import HeartbeatSender
from shared.metrics.endpoint import serve_metrics
from shared.priority import lower_priority
from shared.service import base_parser, run_service


async def serve(config, args, stop) -> None:
    lower_priority(config.eval.niceness, "the evaluator")
    service = EvaluatorService(config)
    # /metrics, /healthz, /readyz; and heartbeats, so `cartridge status` sees it
    async with serve_metrics(config.metrics), HeartbeatSender(config, service.status):
        await service.run(stop)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("cartridge evaluator",
                         "Measure and rate every published model; roll back a regression.")
    return run_service(serve, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
