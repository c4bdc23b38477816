"""The any-sensor student: a wavelength-conditioned spectral stem feeding one timm ConvNeXtV2 trunk.

Stem (DOFA-style dynamic stem). Each input band becomes a descriptor token: optical bands by Fourier
features of their log centre wavelength, SAR bands by a learned polarisation embedding. A band with a
declared spectral range (``range_nm`` or ``bandwidth_nm``) is embedded as the mean of the embeddings at
``RANGE_SAMPLES`` wavelengths spread across its range, so a 450-900 nm panchromatic band is not taken
for a 675 nm line; bands without a range embed exactly as before (one sample at the centre). Only
image bands reach the stem (auxiliary mask/quality/probability bands are refused). One
transformer layer lets the tokens of the input's band set see each other; two linear heads turn each
token into that band's ``patch x patch`` kernel slice (``out_dim`` filters) and the token mean into
the bias. The generated conv replaces timm's ``stem_0``; timm's stem norm and stages follow, so the
student returns the same 4 scales as a specialist of the same variant, for any band set.

Normalisation. The card holds a per-band table ``band_stats = {band: [mean, std]}`` in physical
units (from proxy data or teachers' cards). A band missing from the table takes statistics
interpolated in log-wavelength between the known optical bands around it (clamped at the ends: the
nearest known band), because surface reflectance statistics vary smoothly with wavelength and the
absolute level carries class information; an unknown SAR polarisation takes the mean statistics of
the known SAR bands. Only a band with no known band of its kind (optical vs SAR) is normalised per
instance (its own mean and std over each image).

Ground sampling distance. A GSD-aware student's card holds its working GSD per band (``gsd``: the metres
per pixel each band was distilled at). Told its input's GSD (``forward(x, bands, gsd=...)``, per band, e.g.
:meth:`geodata.sensors.Sensor.band_gsd`), it resamples the input to its working grid before the stem
(area averaging to coarser pixels, bilinear to finer; bands of one input share its grid, so the resampling
factor is the geometric mean of each band's ``input GSD / working GSD``; a band with no working GSD does
not count); ``working_gsd`` overrides the card for one call. Without an input GSD, or with no working GSD for
any of the bands (a GSD-blind student: ``gsd`` empty), the input goes to the trunk as it is. The card's
``gsd`` is not sealed (cards written before it existed load unchanged).

On disk: a sealed artifact (:mod:`specialists.artifact`), ``weights.safetensors`` + ``card.json``.
Load in one line: ``from fusion import load_student; student = load_student("outputs/<run>/student")``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geodata.sensors import Band, BandError, Catalog, get_band
from geodata.stats import BandStats
from specialists import artifact
from specialists.artifact import Card, field_error
from specialists.init import STEM_BIAS, STEM_WEIGHT, adapt_stem, load_encoder_weights
from specialists.trunk import DEFAULT_VARIANT, build_trunk, pyramid_pool
from geodata.errors import InputError

__all__ = [
    "STEM_FIT_STEPS",
    "StudentCard",
    "SpectralStem",
    "Student",
    "save_student",
    "student_from_bytes",
    "load_student",
    "band_stats_table",
    "POLARISATIONS",
    "RANGE_SAMPLES",
    "resample_to_gsd",
]

log = logging.getLogger(__name__)

POLARISATIONS = ("VV", "VH", "HH", "HV")
_LOG_WAVELENGTH_RANGE = (math.log(350.0), math.log(2600.0))  # mapped to [0, 1] before Fourier features
RANGE_SAMPLES = 8  # wavelengths a band with a spectral range is embedded at (midpoints of equal parts)
_MIN_STD = 1e-6
STEM_FIT_STEPS = 1000  # Adam steps fitting a new student's stem to a checkpoint's (relative error ~0.001 at 1000)
_STEM_KEYS = ("embed_dim", "num_freqs")


@dataclass
class StudentCard(Card):
    """What a saved student is: trunk variant and depths, stem settings, band statistics, provenance."""

    KIND: ClassVar[str] = "student"
    SEALED: ClassVar[tuple[str, ...]] = ("variant", "depths", "band_stats", "stem")
    PRIVATE: ClassVar[tuple[str, ...]] = ("teachers", "distill")  # every group's hash, the distillation's record

    name: str = "student"
    depths: list[int] = field(default_factory=list)  # blocks per trunk stage (empty: the variant's own)
    band_stats: dict[str, list[float]] = field(default_factory=dict)
    stem: dict[str, int] = field(default_factory=lambda: {"embed_dim": 64, "num_freqs": 16})
    teachers: list[dict[str, str]] = field(default_factory=list)
    distill: dict[str, Any] = field(default_factory=dict)
    gsd: dict[str, float] = field(default_factory=dict)  # working GSD (m) per band; empty: GSD-blind

    def validate(self, source: str = "student card") -> None:
        """Raise :class:`~specialists.artifact.ArtifactError` naming the first bad field."""
        super().validate(source)
        if not isinstance(self.name, str) or not self.name:
            raise field_error(source, "name", f"must be a non-empty string, got {self.name!r}")
        if not isinstance(self.depths, list) or (self.depths and (
                len(self.depths) != 4 or not all(isinstance(d, int) and d >= 1 for d in self.depths))):
            raise field_error(source, "depths", f"must list 4 positive block counts, got {self.depths!r}")
        if not isinstance(self.band_stats, dict):
            raise field_error(source, "band_stats", f"must be an object, got {type(self.band_stats).__name__}")
        for band, pair in self.band_stats.items():
            if (not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(v, (int, float)) for v in pair)
                    or not all(math.isfinite(v) for v in pair) or pair[1] <= 0):
                raise field_error(source, "band_stats", f"entry {band!r} must be [mean, std>0], got {pair!r}")
        if not isinstance(self.stem, dict) or not set(self.stem) <= set(_STEM_KEYS) or not all(
                isinstance(v, int) and v > 0 for v in self.stem.values()):
            raise field_error(source, "stem", f"must map some of {list(_STEM_KEYS)} to positive integers, "
                              f"got {self.stem!r}")
        if not isinstance(self.gsd, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                for v in self.gsd.values()):
            raise field_error(source, "gsd", f"must map bands to a ground sampling distance > 0 (m), got {self.gsd!r}")
        for band in self.gsd:
            try:
                get_band(band)
            except BandError as exc:
                raise field_error(source, "gsd", f"names an unknown band: {exc}") from None
        for name, kind in (("teachers", list), ("distill", dict)):
            if not isinstance(getattr(self, name), kind):
                raise field_error(source, name, f"must be a JSON {'array' if kind is list else 'object'}")


def band_stats_table(sources: Iterable[BandStats | Mapping[str, Sequence[float]]]) -> dict[str, list[float]]:
    """Merge per-band statistics (``BandStats`` or ``{band: [mean, std]}``); later sources win."""
    table: dict[str, list[float]] = {}
    for source in sources:
        if isinstance(source, BandStats):
            source = {b: (m, s) for b, m, s in zip(source.bands, source.mean, source.std)}
        for band, (mean, std) in source.items():
            table[band] = [float(mean), max(float(std), _MIN_STD)]
    return table


def resample_to_gsd(x: torch.Tensor, factor: float, min_side: int = 1) -> torch.Tensor:
    """``x`` ``[B, C, H, W]`` at ``factor`` times its pixel size: each side ``round(side / factor)`` (at least
    ``min_side``), area averaging when the pixels grow, bilinear when they shrink; unchanged at the same size."""
    size = tuple(max(min_side, round(side / factor)) for side in x.shape[-2:])
    if size == tuple(x.shape[-2:]):
        return x
    if size[0] <= x.shape[-2] and size[1] <= x.shape[-1]:
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _resolve(bands: Sequence[str | Band], catalog: Catalog | None = None) -> list[Band]:
    """The descriptors of ``bands``: given, else ``catalog``'s (a student's card), else the current catalog's."""
    return [b if isinstance(b, Band) else (catalog.bands.get(b) if catalog is not None else None) or get_band(b)
            for b in bands]


def _image_band_objects(bands: Sequence[str | Band], catalog: Catalog | None = None) -> list[Band]:
    """The descriptors of ``bands`` (:func:`_resolve`); auxiliary ones (masks, quality, probabilities) are refused."""
    objects = _resolve(bands, catalog)
    auxiliary = [b for b in objects if b.is_auxiliary]
    if auxiliary:
        raise BandError(f"bands {[b.name for b in auxiliary]} are auxiliary ({', '.join(sorted({b.kind for b in auxiliary}))}), "
                        f"not image bands: the student reads only spectral and SAR bands")
    return objects


def _wavelength_samples(band: Band) -> list[float]:
    """Where an optical band is embedded: its centre, or ``RANGE_SAMPLES`` points across its spectral range."""
    span = band.spectral_range
    if span is None:
        return [band.wavelength_nm]  # type: ignore[list-item]
    step = (span[1] - span[0]) / RANGE_SAMPLES
    return [span[0] + (k + 0.5) * step for k in range(RANGE_SAMPLES)]


def _resolve_stats(bands: Sequence[Band], table: Mapping[str, Sequence[float]],
                   catalog: Catalog | None = None) -> list[tuple[float, float, bool]]:
    """``(mean, std, instance_norm)`` per band, with the fallbacks of the module docstring (``table``'s bands
    described in ``catalog``)."""
    known = dict(zip(table, _resolve(list(table), catalog)))
    optical = sorted((math.log(known[b].wavelength_nm), s) for b, s in table.items() if not known[b].is_sar)
    sar = [s for b, s in table.items() if known[b].is_sar]
    resolved = []
    for band in bands:
        name = band.name
        if name in table:
            resolved.append((float(table[name][0]), float(table[name][1]), False))
        elif band.is_sar and sar:
            resolved.append((float(np.mean([s[0] for s in sar])), float(np.mean([s[1] for s in sar])), False))
        elif not band.is_sar and optical:
            x, xs = math.log(band.wavelength_nm), [o[0] for o in optical]
            mean = float(np.interp(x, xs, [o[1][0] for o in optical]))
            resolved.append((mean, float(np.interp(x, xs, [o[1][1] for o in optical])), False))
        else:
            resolved.append((0.0, 1.0, True))
    return resolved


class SpectralStem(nn.Module):
    """Patchify conv whose kernel is generated from the input's band descriptors (module docstring)."""

    def __init__(self, out_dim: int, patch: int, embed_dim: int = 64, num_freqs: int = 16) -> None:
        super().__init__()
        self.out_dim, self.patch = out_dim, patch
        self.register_buffer("freqs", math.pi * 2.0 ** torch.linspace(0, 6, num_freqs), persistent=False)
        self.optical = nn.Sequential(nn.Linear(2 * num_freqs, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim))
        self.polarisation = nn.Embedding(len(POLARISATIONS), embed_dim)
        self.mixer = nn.TransformerEncoderLayer(
            embed_dim, nhead=4, dim_feedforward=2 * embed_dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.to_weight = nn.Linear(embed_dim, out_dim * patch * patch)
        self.to_bias = nn.Linear(embed_dim, out_dim)
        nn.init.normal_(self.to_weight.weight, std=embed_dim**-0.5)
        nn.init.zeros_(self.to_weight.bias)
        nn.init.zeros_(self.to_bias.weight)
        nn.init.zeros_(self.to_bias.bias)
        self._kernels: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._register_load_state_dict_pre_hook(lambda *_: self._kernels.clear())

    def train(self, mode: bool = True) -> "SpectralStem":
        self._kernels.clear()
        return super().train(mode)

    def tokens(self, bands: Sequence[str | Band]) -> torch.Tensor:
        """``[C, embed_dim]`` descriptor tokens of ``bands`` (descriptors, or names in the current catalog),
        mixed across the band set."""
        device = self.freqs.device
        objects = _image_band_objects(bands)
        tokens = [None] * len(objects)
        optical = [i for i, b in enumerate(objects) if not b.is_sar]
        if optical:
            lo, hi = _LOG_WAVELENGTH_RANGE
            samples = [_wavelength_samples(objects[i]) for i in optical]
            t = torch.tensor([(math.log(w) - lo) / (hi - lo) for ws in samples for w in ws], device=device)
            angles = t[:, None] * self.freqs[None, :]
            emb = self.optical(torch.cat([angles.sin(), angles.cos()], dim=1))
            start = 0
            for i, ws in zip(optical, samples):
                tokens[i] = emb[start:start + len(ws)].mean(0)
                start += len(ws)
        for i, band in enumerate(objects):
            if band.is_sar:
                if band.polarisation not in POLARISATIONS:
                    raise BandError(f"band {band.name!r}: polarisation {band.polarisation!r} "
                                    f"is not one of {POLARISATIONS}")
                tokens[i] = self.polarisation.weight[POLARISATIONS.index(band.polarisation)]
        return self.norm(self.mixer(torch.stack(tokens)[None])[0])

    def kernel(self, bands: Sequence[str | Band]) -> tuple[torch.Tensor, torch.Tensor]:
        """Generated conv weight ``[out_dim, C, patch, patch]`` and bias ``[out_dim]``."""
        tokens = self.tokens(bands)
        c, p = len(bands), self.patch
        weight = self.to_weight(tokens).view(c, self.out_dim, p, p).transpose(0, 1) / math.sqrt(c * p * p)
        return weight.contiguous(), self.to_bias(tokens.mean(0))

    def fit_kernels(self, targets: Sequence[tuple[Sequence[str], torch.Tensor, torch.Tensor]], steps: int = 1000,
                    lr: float = 3e-3) -> float:
        """Train this stem so that ``kernel(bands)`` gives each target's ``(weight, bias)`` (a plain stem's, e.g.
        a checkpoint's adapted to ``bands``): Adam on the summed squared error, relative to the targets' energy.
        Returns the final relative error."""
        targets = [(tuple(b), w.float().to(self.freqs.device), c.float().to(self.freqs.device)) for b, w, c in targets]
        scale = sum(float(w.pow(2).mean() + c.pow(2).mean()) for _, w, c in targets)
        optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        for _ in range(steps):
            loss = sum(F.mse_loss(w_hat, w) + F.mse_loss(c_hat, c)
                       for (bands, w, c) in targets for w_hat, c_hat in [self.kernel(bands)]) / scale
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        self._kernels.clear()
        return float(loss.detach())

    def forward(self, x: torch.Tensor, bands: Sequence[str | Band]) -> torch.Tensor:
        """Conv with the generated kernel; in eval mode without autograd the kernel is generated once
        per band set (and device), so inference costs exactly a plain ConvNeXt stem."""
        if self.training or torch.is_grad_enabled():
            weight, bias = self.kernel(bands)
        else:
            key = (tuple(b.name if isinstance(b, Band) else b for b in bands), x.device)
            if key not in self._kernels:
                self._kernels[key] = self.kernel(bands)
            weight, bias = self._kernels[key]
        return F.conv2d(x, weight, bias, stride=self.patch)


class Student(nn.Module):
    """Any-sensor encoder: ``forward(x, bands) -> 4 scales``; ``x`` is ``[B, len(bands), H, W]`` physical.

    ``bands`` are descriptors (:class:`~geodata.sensors.Band`) or names: a name means what the card's
    ``band_descriptors`` say (the bands the student learnt), else what the current catalog says."""

    def __init__(self, card: StudentCard) -> None:
        super().__init__()
        card.check()
        self.catalog = card.catalog()
        trunk = build_trunk(card.variant, depths=card.depths)
        stem_conv = getattr(trunk, "stem_0", None)
        if not isinstance(stem_conv, nn.Conv2d):
            raise InputError(f"student variant {card.variant!r}: expected a ConvNeXt-style 'stem_0' conv")
        trunk.stem_0 = nn.Identity()
        self.stem = SpectralStem(stem_conv.out_channels, stem_conv.kernel_size[0], **card.stem)
        self.trunk = trunk
        card.feature_dims = [int(c) for c in trunk.feature_info.channels()]
        card.feature_reductions = [int(r) for r in trunk.feature_info.reduction()]
        card.num_params = sum(p.numel() for p in self.parameters())
        self.card = card
        self._norm_cache: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def create(
        cls,
        variant: str = DEFAULT_VARIANT,
        band_stats: Mapping[str, Sequence[float]] | None = None,
        name: str = "student",
        embed_dim: int = 64,
        num_freqs: int = 16,
        seed: int | None = None,
        depths: Sequence[int] | None = None,
        catalog: Catalog | None = None,
    ) -> "Student":
        """A fresh student (deterministic when ``seed`` is given); ``depths`` overrides the variant's
        blocks per stage (e.g. ``(2, 2, 5, 2)``: atto with one block fewer, smaller than an atto specialist);
        ``catalog``: what the names of ``band_stats`` mean (default: the catalog in use)."""
        table = band_stats_table([band_stats or {}])
        card = StudentCard(name=name, variant=variant, depths=list(depths or []), band_stats=table,
                           band_descriptors=catalog.band_records(table) if catalog is not None else {},
                           stem={"embed_dim": embed_dim, "num_freqs": num_freqs})
        if seed is None:
            return cls(card)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(card)

    @property
    def feature_dims(self) -> tuple[int, ...]:
        return tuple(self.card.feature_dims)

    @property
    def feature_reductions(self) -> tuple[int, ...]:
        return tuple(self.card.feature_reductions)

    def inference_params(self, bands: Sequence[str]) -> int:
        """Parameters that run for an input of ``bands`` once the stem kernel is generated: the trunk plus
        a plain ``len(bands)``-channel stem conv (the size of a specialist on those bands)."""
        stem = self.stem.out_dim * (len(bands) * self.stem.patch**2 + 1)
        return sum(p.numel() for p in self.trunk.parameters()) + stem

    def set_band_stats(self, table: Mapping[str, Sequence[float]], catalog: Catalog | None = None) -> None:
        """Replace the normalisation table (e.g. with statistics measured on proxy data); a band new to the
        card is described from ``catalog`` (default: the catalog in use)."""
        self.card.band_stats = band_stats_table([table])
        self.card.describe_bands(catalog)
        self.card.check()
        self.catalog = self.card.catalog()
        self._norm_cache.clear()

    def set_gsd(self, table: Mapping[str, float]) -> None:
        """Set the working GSD (m) per band (module docstring); an empty table makes the student GSD-blind."""
        self.card.gsd = {b: float(v) for b, v in table.items()}
        self.card.validate()

    def gsd_factor(self, bands: Sequence[str | Band], gsd: float | Sequence[float] | None,
                   working_gsd: float | None = None) -> float:
        """How many times the working pixel is larger than the input's: the geometric mean over ``bands`` with a
        working GSD (``working_gsd`` for all, when given) of ``working / input``; 1 when nothing is known."""
        if gsd is None:
            return 1.0
        names = tuple(b.name if isinstance(b, Band) else b for b in bands)
        given = [float(gsd)] * len(names) if isinstance(gsd, (int, float)) else [float(g) for g in gsd]
        if len(given) != len(names) or not all(math.isfinite(g) and g > 0 for g in given):
            raise BandError(f"input GSD {gsd!r} must be one positive value or one per band of {names}")
        pairs = [(g, working_gsd if working_gsd is not None else self.card.gsd.get(b)) for b, g in zip(names, given)]
        logs = [math.log(w / g) for g, w in pairs if w is not None]
        return math.exp(sum(logs) / len(logs)) if logs else 1.0

    def describe(self, bands: Sequence[str | Band]) -> tuple[Band, ...]:
        """The descriptors of ``bands`` (class docstring); auxiliary bands are refused."""
        return tuple(_image_band_objects(bands, self.catalog))

    def normalise(self, x: torch.Tensor, bands: Sequence[str | Band]) -> torch.Tensor:
        bands = self.describe(bands)
        if x.ndim != 4 or x.shape[1] != len(bands):
            raise BandError(f"student input has shape {tuple(x.shape)} but {len(bands)} band names "
                            f"{tuple(b.name for b in bands)}")
        if bands not in self._norm_cache:
            means, stds, instance = zip(*_resolve_stats(bands, self.card.band_stats, self.catalog))
            fallback = [b.name for b, inst in zip(bands, instance) if inst]
            unseen = [b.name for b in bands if b.name not in self.card.band_stats]
            if unseen:
                log.info("student: bands %s have no stored statistics; %s", unseen,
                            f"instance-normalising {fallback}" if fallback else "interpolating by wavelength")
            shape = (1, len(bands), 1, 1)
            self._norm_cache[bands] = (
                torch.tensor(means).view(shape), torch.tensor(stds).view(shape), torch.tensor(instance).view(shape)
            )
        mean, std, instance = (t.to(x.device) for t in self._norm_cache[bands])
        out = (x - mean) / std
        if instance.any():
            inst = (x - x.mean(dim=(-2, -1), keepdim=True)) / x.std(dim=(-2, -1), keepdim=True).clamp_min(_MIN_STD)
            out = torch.where(instance, inst, out)
        return out

    def start_from(self, init: str | Path, band_sets: Sequence[Sequence[str]], tolerance_nm: float,
                   stem_fit_steps: int = STEM_FIT_STEPS) -> dict[str, Any]:
        """Load the checkpoint ``init`` into the trunk (:func:`specialists.init.load_encoder_weights`), then fit
        the spectral stem to generate the checkpoint's stem adapted to each of ``band_sets`` (within
        ``tolerance_nm``), so the loaded
        stages see what they were trained on (nothing to fit when the file names no stem bands); returns the
        card's record of the start (source, sha256, the fit's relative error)."""
        ckpt = load_encoder_weights(self.trunk, init, tolerance_nm=tolerance_nm)
        record = ckpt.record()
        if STEM_WEIGHT in ckpt.state and STEM_BIAS in ckpt.state and ckpt.bands is not None:
            weight, bias = ckpt.state[STEM_WEIGHT].float(), ckpt.state[STEM_BIAS].float()
            targets = [(tuple(b), adapt_stem(weight, ckpt.bands, b, ckpt.path, tolerance_nm), bias) for b in band_sets]
            record["stem_fit_error"] = self.stem.fit_kernels(targets, stem_fit_steps)
            log.info("student stem fitted to %s's stem on %d band sets: relative error %.4f", ckpt.path.name,
                     len(targets), record["stem_fit_error"])
        return record

    def forward(self, x: torch.Tensor, bands: Sequence[str | Band], gsd: float | Sequence[float] | None = None,
                working_gsd: float | None = None) -> list[torch.Tensor]:
        """4 scales of ``x`` (``gsd``: the input's GSD in m, one value or one per band; module docstring)."""
        bands = self.describe(bands)
        x = self.normalise(x, bands)
        factor = self.gsd_factor(bands, gsd, working_gsd)
        if factor != 1.0:
            x = resample_to_gsd(x, factor, min_side=self.feature_reductions[-1])
        return list(self.trunk(self.stem(x, bands)))

    def pooled(self, x: torch.Tensor, bands: Sequence[str | Band], gsd: float | Sequence[float] | None = None,
               working_gsd: float | None = None) -> torch.Tensor:
        """``[B, 2 * sum(feature_dims)]``: :func:`specialists.trunk.pyramid_pool` of every scale."""
        return pyramid_pool(self.forward(x, bands, gsd, working_gsd))


def save_student(student: Student, directory: str | Path) -> Path:
    """Write ``weights.safetensors`` and the sealed ``card.json``; return the folder."""
    return artifact.save(student.card, student, directory)


def load_student(directory: str | Path, map_location: str | torch.device = "cpu") -> Student:
    """Read a saved student (in eval mode), with every check of :func:`specialists.artifact.load`."""
    _, student = artifact.load(directory, StudentCard, Student)
    return student.to(map_location).eval()


def student_from_bytes(card_json: str, data: bytes, card_source: str, weights_source: str) -> Student:
    """A student from its card JSON and safetensors bytes (in eval mode), with every check of :func:`load_student`."""
    _, student = artifact.from_bytes(StudentCard, card_json, data, Student, card_source, weights_source)
    return student.eval()
