"""Evaluation at an institution: probe received frozen encoders (student, ensemble) and the two
baselines (:mod:`fusion.baselines`: a random-init twin of the student, band statistics) on the local
labelled splits; only the scores leave the node."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from torch import nn

from clients.data import institution_tiles, open_manifest
from clients.institution import InstitutionSpec
from fusion.baselines import baseline_encoders
from fusion.data import labelled_loader
from fusion.probes import ProbeResult, probe_encoder
from fusion.student import Student
from geodata.stats import load_or_compute_stats
from geodata.errors import InputError

__all__ = ["probe_locally"]

log = logging.getLogger(__name__)


def probe_locally(spec: InstitutionSpec, encoders: Mapping[str, nn.Module], fractions: Sequence[float],
                  seeds: Sequence[int], batch_size: int = 64, device: str = "cpu",
                  baselines: bool = True) -> list[ProbeResult]:
    """Probe every encoder (frozen) on this institution's task, then (``baselines``) a random-init twin of
    the ``student`` encoder and band statistics: fit on ``train`` (tuned on ``val`` where it has one),
    score on ``test``."""
    manifest = open_manifest(spec)
    task = manifest.task(spec.task)
    splits = {s: bool(institution_tiles(manifest, spec, s)) for s in ("train", "val", "test")}
    if not (splits["train"] and splits["test"]):
        raise InputError(f"institution {spec.name!r}: probing needs 'train' and 'test' tiles, it has "
                         f"{[s for s, present in splits.items() if present]}")
    region = spec.region or None
    stats = load_or_compute_stats(manifest, spec.sensor, "train", region=region)

    def loader(split: str):
        return labelled_loader(manifest, spec.sensor, spec.task, split, batch_size=batch_size, stats=stats,
                               region=region, resize=spec.resize or None)

    if baselines:
        student = encoders.get("student")
        encoders = {**encoders, **baseline_encoders(stats, student if isinstance(student, Student) else None)}
    results: list[ProbeResult] = []
    for name, encoder in encoders.items():
        encoder.to(device).eval()
        results += probe_encoder(name, encoder, spec.task, task, loader("train"), loader("test"),
                                 loader("val") if splits["val"] else None, fractions, seeds, device=device)
    log.info("Institution %s probed %s", spec.name, ", ".join(encoders))
    return results
