"""Flower ServerApp: the coordinator. The run itself lives in :func:`server.run.run_experiment`."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.run import run_experiment

app = ServerApp()


def _log_to_stderr() -> None:
    """Show the project's INFO logs in the run's log stream (Flower configures only its own logger)."""
    for name in ("server", "fusion", "specialists", "geodata"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)


@app.main()
def main(grid: Grid, context: Context) -> None:
    _log_to_stderr()
    run_experiment(grid, context.run_config, context.run_id)
