"""Flower ServerApp: the coordinator. The run itself lives in :func:`server.run.run_experiment`."""

from __future__ import annotations


from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from pipeline.logs import configure_logging
from server.run import run_experiment

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    configure_logging()
    run_experiment(grid, context.run_config, context.run_id)
