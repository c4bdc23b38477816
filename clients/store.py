"""The specialists an institution keeps: ``<store>/specialists/<weights sha256>/`` (safetensors + card).

The final weights of every group an institution trained in are kept here, so that it can upload
them at enrolment, or, when weights stay home, compute teacher features on the coordinator's proxy
batches. A specialist is found by the sha256 the coordinator knows from its card.
"""

from __future__ import annotations

import logging
from pathlib import Path

from clients.institution import InstitutionSpec
from specialists import Specialist, load_specialist
from specialists.artifact import write
from specialists.io import specialist_to_bytes
from geodata.errors import InputError

__all__ = ["keep_specialist", "kept_specialist"]

log = logging.getLogger(__name__)


def _folder(spec: InstitutionSpec, sha: str) -> Path:
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise InputError(f"institution {spec.name!r}: {sha!r} is not a sha256 hex digest")
    return spec.store_dir / "specialists" / sha


def keep_specialist(spec: InstitutionSpec, specialist: Specialist) -> Path:
    """Save ``specialist`` into the store; its card's sha256 must match the weights."""
    expected = specialist.card.weights_sha256
    folder = _folder(spec, expected)
    data = specialist_to_bytes(specialist)  # serialised once: hashed, checked, written
    if specialist.card.weights_sha256 != expected:
        raise InputError(f"institution {spec.name!r}: received weights hash to {specialist.card.weights_sha256}, "
                         f"the card says {expected}")
    write(specialist.card, data, folder)
    log.info("Institution %s keeps specialist %s in %s", spec.name, specialist.card.name, folder)
    return folder


def kept_specialist(spec: InstitutionSpec, sha: str) -> Specialist:
    """The specialist with weights ``sha`` from the store (checked on load)."""
    folder = _folder(spec, sha)
    if not folder.is_dir():
        raise InputError(f"institution {spec.name!r} keeps no specialist with sha256 {sha[:12]}... in {folder.parent}")
    return load_specialist(folder)
