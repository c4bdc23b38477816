"""The one rule for names that become file or folder names (institutions, sensors, tasks, groups,
specialists, runs), and the check that a path built from them stays inside its root.

A safe name is 1 to 64 characters of letters, digits, ``.``, ``_`` and ``-``, starts with a letter or
digit and holds no ``..``: it can never be a path separator, a parent reference or hidden file.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from geodata.errors import InputError

__all__ = ["SAFE_NAME", "NAME_RULE", "is_safe_name", "check_name", "inside"]

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "1-64 letters, digits, '.', '_', '-' (starting with a letter or digit, no '..')"


def is_safe_name(value: Any) -> bool:
    """Whether ``value`` is a string that follows the safe-name rule."""
    return isinstance(value, str) and SAFE_NAME.fullmatch(value) is not None and ".." not in value


def check_name(value: Any, what: str) -> str:
    """``value`` if it is a safe name; otherwise ``ValueError`` naming ``what`` (e.g. "institution")."""
    if not is_safe_name(value):
        raise InputError(f"{what} {value!r} must be {NAME_RULE}")
    return value


def inside(root: str | Path, *parts: str) -> Path:
    """``root`` joined with ``parts``; ``ValueError`` when the resolved path leaves the resolved ``root``."""
    root = Path(root)
    path = root.joinpath(*parts)
    if not path.resolve().is_relative_to(root.resolve()):
        raise InputError(f"path {'/'.join(parts)!r} leaves {root}")
    return path
