"""The one logging set-up of the project's packages (the CLI, the ServerApp and the ClientApp call it)."""

from __future__ import annotations

import logging

__all__ = ["PACKAGES", "configure_logging"]

PACKAGES = ("eosfed", "geodata", "specialists", "fusion", "pipeline", "wire", "clients", "server")


def configure_logging(level: int = logging.INFO) -> None:
    """Send the project's log records at ``level`` and above to stderr, one line each with time, level and
    logger; Flower's own logger is left as Flower configures it. Where the root logger already has
    handlers (a host application, pytest) records go there instead. Calling it again only changes the level."""
    hosted = bool(logging.getLogger().handlers)
    for name in PACKAGES:
        logger = logging.getLogger(name)
        if not hosted and not logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
            logger.addHandler(handler)
        logger.setLevel(level)
