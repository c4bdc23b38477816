"""``eosfed <command> ...``: thin dispatcher over the modules of :mod:`eosfed.commands`.

Each command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; register it in
``COMMANDS`` with a one-line help. Modules are imported only when their command runs. A user error
(:class:`geodata.errors.InputError`: a wrong flag, file, band or value; or a missing file) ends in one line on stderr
and exit status 2; ``-v`` shows the traceback. The sensors of ``$EOSFED_SENSORS``
and of its ``--sensors FILE`` options are what band names mean while it runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from eosfed.commands.args import HelpFormatter, load_sensor_args
from geodata.errors import InputError
from pipeline.logs import configure_logging

COMMANDS: dict[str, str] = {
    "run": "run the federation on this machine through Flower (the simulation); exit 0 only when it completed",
    "synth": "generate a synthetic multi-sensor world",
    "train-specialist": "train one specialist from a manifest, no federation",
    "base": "make the base checkpoint specialists and students start from (a synthetic world of its own seed)",
    "pretrain": "self-supervised FCMAE pretraining of an encoder on a manifest's tiles (labels ignored)",
    "distill": "distil a registry's specialists into one any-sensor student",
    "evaluate": "probe frozen encoders (student, specialist, ensemble) on a task",
    "manifest": "build a manifest from data on disk (per layout)",
    "prune": "score specialists' contributions and write a smaller registry",
    "finetune": "fine-tune an encoder with a task head; write a sealed task model",
    "predict": "map scene rasters with a fine-tuned segmentation model (GeoTIFFs out)",
    "gateway": "serve partners the SuperLink's Fleet API only (TLS), keeping its Control API on loopback",
}

USER_ERRORS = (InputError, OSError)  # anything else is a bug: its traceback is kept


def _module(command: str):
    return importlib.import_module(f"eosfed.commands.{command.replace('-', '_')}")


def _message(exc: BaseException) -> str:
    """The error as one line (a KeyError without the quotes ``str`` adds)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(text.split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    wanted = next((a for a in argv if not a.startswith("-")), None)
    verbose = any(a in ("-v", "--verbose") for a in argv[:argv.index(wanted) if wanted else len(argv)])
    parser = argparse.ArgumentParser(prog="eosfed", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    try:
        for name, help_text in COMMANDS.items():
            p = sub.add_parser(name, help=help_text, description=help_text,
                               formatter_class=HelpFormatter)
            if name == wanted:  # only the chosen command pays for its imports
                _module(name).add_arguments(p)
        args, extra = parser.parse_known_args(argv)
        if extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        configure_logging(logging.DEBUG if args.verbose else logging.INFO)
        from geodata.sensors import using  # geodata imports torch: only when running

        with using(load_sensor_args(args)):
            return int(_module(args.command).run(args) or 0)
    except USER_ERRORS as exc:
        if verbose:
            raise
        print(f"eosfed {wanted}: error: {_message(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
