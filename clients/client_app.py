"""Flower ClientApp: the institution side. Message types are ``<category>.<action>``, e.g.
``query.identify``; the handlers live in :mod:`clients.handlers`."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from clients import handlers
from pipeline.logs import configure_logging
from wire.held import restore
from wire.messages import FUSION_FILES

app = ClientApp()


@app.lifespan()
def lifespan(context: Context) -> Iterator[None]:
    """Show the project's INFO logs in the node's output (Flower configures only its own logger); say how
    many torch threads this ClientApp computes with (in the simulation: the CPUs Ray gave it)."""
    configure_logging()
    _say_threads()
    yield


@functools.cache
def _say_threads() -> None:
    """Once per process (the lifespan runs around every message)."""
    import torch

    logging.getLogger(__name__).info("ClientApp process %d: %d torch thread(s)", os.getpid(), torch.get_num_threads())


@app.query("identify")
def identify(message: Message, context: Context) -> Message:
    return handlers.identify(message, context)


@app.query("describe")
def describe(message: Message, context: Context) -> Message:
    return handlers.describe(message, context)


@app.train("specialist")
def train(message: Message, context: Context) -> Message:
    return handlers.train(message, context)


@app.train("pretrain")
def pretrain(message: Message, context: Context) -> Message:
    return handlers.pretrain(message, context)


@app.evaluate("specialist")
def evaluate(message: Message, context: Context) -> Message:
    return handlers.evaluate(message, context)


@app.query("enrol")
def enrol(message: Message, context: Context) -> Message:
    return handlers.enrol(message, context)


@app.query("features")
def features(message: Message, context: Context) -> Message:
    return handlers.features(message, context)


@app.evaluate("fusion")
def evaluate_fusion(message: Message, context: Context) -> Message:
    """The student and ensemble files are kept in the node's state: later requests refer to them (wire.held)."""
    restore(message.content, context.state, FUSION_FILES, "coordinator")
    return handlers.evaluate_fusion(message, context)
