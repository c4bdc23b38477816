"""Error types for bad input: :class:`InputError`, the base of every error eosfed raises on purpose about
what it was given, and :class:`RasterError` for raster files."""

from __future__ import annotations

from pathlib import Path

__all__ = ["InputError", "RasterError"]


class InputError(ValueError):
    """Bad input: a file, a setting, a name, a partner's message. Its message names what is wrong (file,
    band, node, field); ``eosfed`` shows it as one line with exit status 2. Any other exception is a bug and
    keeps its traceback."""


class RasterError(InputError):
    """Bad raster input: the message starts with the file (or manifest) at fault, then the problem.

    Raised for unreadable or truncated files, a band count that does not match the declared sensor,
    missing band files, paired rasters on different grids, all-nodata tiles, labels outside a task's
    class list and empty selections.
    """

    def __init__(self, where: str | Path, problem: str) -> None:
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{where}: {problem}")
