"""``eosfed <command> ...``: thin dispatcher over command modules.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; register it in
``COMMANDS`` with a one-line help. Modules are imported only when their command runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module, help)
    "train-specialist": ("specialists.cli", "train one specialist from a manifest, no federation"),
    "distill": ("fusion.commands.distill", "distil a registry's specialists into one any-sensor student"),
    "evaluate": ("fusion.commands.evaluate", "probe frozen encoders (student, specialist, ensemble) on a task"),
    "prune": ("fusion.commands.prune", "score specialists' contributions and write a smaller registry"),
    "synth": ("geodata.synth.cli", "generate a synthetic multi-sensor world"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eosfed", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else argv
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == wanted:  # only the chosen command pays for its imports
            importlib.import_module(module).add_arguments(p)
    args, extra = parser.parse_known_args(argv)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
