"""What every command shares: the user-error type, the ``--out``/``--overwrite`` convention, ``--sensors FILE``,
checked split names, and flags generated from the settings dataclasses (so a flag's default is the
setting's one default)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shutil
import tempfile
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, TypeVar
from geodata.errors import InputError

if TYPE_CHECKING:
    from geodata.manifest import Manifest
    from geodata.sensors import Catalog

__all__ = ["HelpFormatter", "UsageError", "add_output", "add_settings", "check_output", "overrides_from",
           "settings_from", "staged_output",
           "add_sensor_files", "load_sensor_args", "check_split", "optional_split"]

T = TypeVar("T")


class HelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless it has none or the text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or "default" in text or action.required:
            return text
        return f"{text} (default: %(default)s)"


class UsageError(InputError):
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


def _flag_type(hint: Any) -> tuple[Any, str | None]:
    """argparse ``type`` and ``nargs`` for a dataclass field's type hint."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    if typing.get_origin(hint) in (list, typing.List):
        return typing.get_args(hint)[0], "+"
    return hint, None


def add_settings(parser: argparse.ArgumentParser, settings: type, title: str, only: tuple[str, ...] = (),
                 skip: tuple[str, ...] = (), path: str = "") -> None:
    """One ``--flag`` per field of the dataclass ``settings`` (``weight_decay`` -> ``--weight-decay``; only
    the fields in ``only`` when given, none in ``skip``), its default the field's; booleans become
    ``--flag/--no-flag``. With ``path``, the settings' place in the tree (``train.dp``), flags take its last
    part as a prefix (``--dp-clipping-norm``) and are unset unless given, for :func:`overrides_from`."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(settings)
    defaults = settings()
    prefix = path.rsplit(".", 1)[-1] + "_" if path else ""
    for f in dataclasses.fields(settings):
        if f.name in skip or (only and f.name not in only):
            continue
        flag, default = "--" + (prefix + f.name).replace("_", "-"), getattr(defaults, f.name)
        dest, text = (f"{path}.{f.name}", f"{path}.{f.name} (default: the experiment's, else {default})") if path \
            else (f.name, f"{settings.__name__}.{f.name}")
        kind, nargs = _flag_type(hints[f.name])
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None if path else default,
                               dest=dest, help=text)
        else:
            group.add_argument(flag, type=kind, nargs=nargs, default=None if path else default, dest=dest, help=text,
                               metavar=f.name.upper())


def overrides_from(args: argparse.Namespace, settings: type, path: str) -> list[str]:
    """Hydra overrides (``train.dp.mode=server``) for the flags :func:`add_settings` added under ``path``
    that were given."""
    return [f"{path}.{f.name}={value}" for f in dataclasses.fields(settings)
            if (value := getattr(args, f"{path}.{f.name}", None)) is not None]


def settings_from(args: argparse.Namespace, settings: type[T], **fixed: Any) -> T:
    """The ``settings`` dataclass from the flags :func:`add_settings` added (plus ``fixed`` fields)."""
    names = {f.name for f in dataclasses.fields(settings)}
    return settings(**{n: getattr(args, n) for n in names if hasattr(args, n) and n not in fixed}, **fixed)


def _pixels(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive number of pixels, got {value}")
    return value


def add_tile_size(parser: argparse.ArgumentParser, note: str = "") -> None:
    """Add ``--size`` (centre crop, native pixels) and ``--resize`` (the whole tile, or its crop, resampled)."""
    parser.add_argument("--size", type=_pixels, help=f"centre-crop tiles to this size{note}")
    parser.add_argument("--resize", type=_pixels,
                        help="resample tiles (after --size) to this size by area averaging: the whole scene "
                             "at a coarser resolution")


def add_sensor_files(parser: argparse.ArgumentParser) -> None:
    """Add ``--sensors FILE`` (repeatable): sensor YAML files or folders registered before the command runs
    (read by :func:`load_sensor_args` into the catalog ``eosfed.cli.main`` runs every command in)."""
    parser.add_argument("--sensors", dest="sensor_files", action="append", type=Path, metavar="FILE",
                        help="sensor YAML file or folder to read; repeat for several (also $EOSFED_SENSORS)")


def load_sensor_args(args: argparse.Namespace) -> "Catalog":
    """The catalog a command runs in: the default one (built-ins, ``$EOSFED_SENSORS``) plus the command's
    ``--sensors`` files and the sensor files beside the manifests it reads (``--manifest``, ``--proxy``);
    ``eosfed.cli.main`` runs the command inside :func:`geodata.sensors.using` it."""
    from geodata.manifest import sensors_beside  # geodata imports torch: only when running
    from geodata.sensors import default, load_sensor_files

    catalog = load_sensor_files(getattr(args, "sensor_files", None) or (), default())
    given = [getattr(args, name, None) for name in ("manifest", "proxy")] + list(getattr(args, "manifests", None) or ())
    for path in (Path(p) for p in given if isinstance(p, (str, Path))):
        if path.exists():
            catalog = sensors_beside(path if path.is_dir() else path.parent, catalog)
    return catalog


def check_split(manifest: "Manifest", split: str, flag: str, **filters: str | None) -> str:
    """``split``, if it has tiles matching ``filters`` (:meth:`Manifest.select`); else a :class:`UsageError`
    naming ``flag`` and listing the splits that have such tiles."""
    splits = manifest.splits(**filters)
    if split not in splits:
        what = ", ".join(f"{k} {v!r}" for k, v in filters.items() if v is not None)
        raise UsageError(f"{manifest.source}: {flag} {split!r} has no tiles for {what}; "
                         f"splits with such tiles: {splits or 'none'}")
    return split


def optional_split(manifest: "Manifest", given: str | None, default: str, flag: str,
                   **filters: str | None) -> str | None:
    """An optional split flag: ``''`` is no split, ``None`` (not given) is ``default`` when it has tiles
    (else no split), a name must pass :func:`check_split`."""
    if given == "":
        return None
    if given is None:
        return default if default in manifest.splits(**filters) else None
    return check_split(manifest, given, flag, **filters)
