"""The one error type for bad raster input."""

from __future__ import annotations

from pathlib import Path

__all__ = ["RasterError"]


class RasterError(ValueError):
    """Bad raster input: the message starts with the file (or manifest) at fault, then the problem.

    Raised for unreadable or truncated files, a band count that does not match the declared sensor,
    missing band files, paired rasters on different grids, all-nodata tiles, labels outside a task's
    class list and empty selections.
    """

    def __init__(self, where: str | Path, problem: str) -> None:
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{where}: {problem}")
