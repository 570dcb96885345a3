"""What every service's `main` does: read config and flags, set up logging, run on uvloop
until SIGTERM/SIGINT asks for a clean stop.

A service is an `async def run(config, args, stop)`; `stop` is set by the first signal
(a second one stops at once). A `ConfigError` exits with code 2 and names the key.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Awaitable, Callable

import uvloop

from shared.config import Config, ConfigError, load_config, parse_overrides
from shared.retry import DependencyError

log = logging.getLogger("cartridge")

Service = Callable[[Config, argparse.Namespace, asyncio.Event], Awaitable[None]]


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", help="config file (default: config.toml, or $CARTRIDGE_CONFIG)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config key (wins over the file and the environment)")
    return parser


# The connection libraries log every reconnect attempt and dropped connection as
# WARNING or ERROR, often with a traceback; the back ends say what a person needs once
# per outage ("lost ..." / "... back after N s", see `shared.retry.Link`). Their lines
# are kept, as DEBUG lines: shown only with `common.log_level = "DEBUG"`.
DEMOTED = ("aio_pika", "aiormq", "asyncpg")
# Except a broker resource alarm (disk or memory): it blocks every publisher, model events
# included, until it clears, and only aiormq hears of it; one line each way, kept.
KEPT = {"Connection %r was blocked by: %r", "Connection %r was unblocked"}


class Demote(logging.Filter):
    """Turns the records of `DEMOTED` libraries into DEBUG records (dropped unless
    `show`)."""

    def __init__(self, show: bool):
        super().__init__()
        self.show = show

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.partition(".")[0] not in DEMOTED or record.msg in KEPT:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return self.show


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(Demote(show=logging.getLevelName(level) <= logging.DEBUG))
    logging.basicConfig(level=level, handlers=[handler], format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Library chatter at INFO (every reconnect attempt, every request) drowns the progress.
    for noisy in ("aio_pika", "aiormq", "botocore", "aiobotocore", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def load_command_config(parser: argparse.ArgumentParser, args: argparse.Namespace,
                        flags: dict | None = None, defaults: dict | None = None) -> Config:
    """The config a command's `--config` and `--set` name (`flags`, from its own options,
    win over `--set`). A bad key or value prints `<prog>: configuration error: ...`
    naming it and exits with code 2, as argparse does for a bad flag: every command the
    same, no traceback."""
    try:
        overrides = parse_overrides(args.set)
        for section, values in (flags or {}).items():
            overrides.setdefault(section, {}).update(values)
        return load_config(args.config, overrides=overrides, defaults=defaults)
    except ConfigError as exc:
        print(f"{parser.prog}: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def run_service(service: Service, parser: argparse.ArgumentParser, argv: list[str] | None = None,
                flag_overrides: Callable[[argparse.Namespace], dict] | None = None,
                defaults: dict | None = None) -> int:
    args = parser.parse_args(argv)
    config = load_command_config(parser, args, flag_overrides(args) if flag_overrides else None, defaults)
    return run_configured(service, config, args, parser.prog)


def run_configured(service: Service, config: Config, args: argparse.Namespace, prog: str) -> int:
    """What `run_service` does once the config is loaded (logging, uvloop, signals, exit
    codes); called directly by a worker process whose parent hands it its config."""
    setup_logging(config.common.log_level)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            if stop.is_set():
                log.warning("second %s: stopping now", signal.Signals(signum).name)
                for task in asyncio.all_tasks(loop):
                    task.cancel()
                return
            log.info("%s received: finishing in-flight work, then stopping", signal.Signals(signum).name)
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        await service(config, args, stop)

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    except ConfigError as exc:  # e.g. an env_id no game has
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return 2
    except DependencyError as exc:  # e.g. a database that never came up: one clear line
        log.error("%s", exc)
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        return 1
    return 0
