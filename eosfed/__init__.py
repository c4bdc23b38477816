"""eosfed: the ``eosfed <command>`` entry point, and :func:`create_model` (timm-style opening of any
eosfed artifact, :mod:`fusion.models`), imported on first use so the CLI starts without torch."""

from __future__ import annotations

from typing import Any

__all__ = ["create_model"]


def __getattr__(name: str) -> Any:
    if name == "create_model":
        from fusion.models import create_model

        return create_model
    raise AttributeError(f"module 'eosfed' has no attribute {name!r}")
