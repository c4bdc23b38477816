"""What every command shares: the user-error type and the ``--out``/``--overwrite`` convention."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["HelpFormatter", "UsageError", "add_output", "check_output", "staged_output"]


class HelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless it has none or the text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text or action.required:
            return text
        return f"{text} (default: %(default)s)"


class UsageError(ValueError):
    """A mistake of the user's (a wrong name, flag or file): shown as one line, exit status 2."""


def add_output(parser: argparse.ArgumentParser, help_text: str) -> None:
    """Add the required ``--out`` and ``--overwrite`` flags."""
    parser.add_argument("--out", required=True, type=Path, help=help_text)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an existing ``out`` (other than an empty folder) unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not overwrite and not (out.is_dir() and not any(out.iterdir())):
        raise UsageError(f"{out} exists; pass --overwrite to replace it")


@contextlib.contextmanager
def staged_output(out: Path, overwrite: bool, *, folder: bool = True, keep: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a staging path beside ``out``; on success it replaces ``out`` in one rename, on failure it is
    removed and an existing ``out`` is untouched. An existing ``out`` is refused unless ``overwrite``.

    ``folder``: ``out`` is a folder (else a file). ``keep``: entries of an existing ``out`` folder moved
    into the staging folder first (e.g. a cache a rerun reuses); they are moved back on failure.
    """
    out = Path(out)
    check_output(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    target = stage / out.name if not folder else stage
    moved = []
    if folder and out.is_dir():
        for name in keep:
            if (out / name).exists():
                (out / name).rename(stage / name)
                moved.append(name)
    try:
        yield target
    except BaseException:
        for name in moved:
            if not (out / name).exists():
                (stage / name).rename(out / name)
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{stage.name}"
        out.rename(old)
    target.rename(out)
    if not folder:
        shutil.rmtree(stage, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
