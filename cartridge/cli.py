"""The `cartridge` command: one entry point for every service and tool."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "up": ("cartridge.up", "run the whole pipeline on this machine, no services needed"),
    "actor": ("services.actor.__main__", "run self-play and publish games (RabbitMQ)"),
    "ingest": ("services.ingest.__main__", "store published games in PostgreSQL"),
    "trainer": ("services.trainer.__main__", "train from the replay buffer, publish models"),
    "evaluator": ("services.evaluator.__main__", "measure and rate every published model, roll back regressions"),
    "ratings": ("cartridge.ratings", "print every model version's rating and accuracy"),
    "eval": ("cartridge.eval", "measure one model's accuracy and rating games once, by hand"),
    "status": ("cartridge.status", "show every running service, queue depths, models; exit 1 if one is down"),
    "web": ("cartridge.web", "serve the web page: training curves, ratings, play a model"),
    "reload": ("cartridge.reload", "ask every actor to load a model version now"),
    "provision": ("cartridge.provision", "as the admin: declare the broker topology, make each service's login"),
    "analyze": ("cartridge.analyze", "print a model's move choices for positions"),
    "arena": ("cartridge.arena", "play a model against a fixed opponent and count wins"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in COMMANDS:
        print("usage: cartridge COMMAND [options]\n\ncommands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<10} {help_text}")
        print("\n`cartridge COMMAND --help` for a command's options.")
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
