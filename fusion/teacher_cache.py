"""Teacher features for distillation: extracted once, cached in fp16, keyed by (sample id, weights hash).

A teacher's *targets* for a sample are its raw features at the last two scales (``stage2``,
``stage3``) and the global average of the last scale (``pooled``). They come either from a local
specialist (:func:`extract_teacher_features`) or from someone else (a partner that keeps its weights
at home runs :func:`extract_teacher_features` on the proxy batches it receives and sends the result
back); either way they enter the :class:`TeacherCache` through :meth:`TeacherCache.put`.

On disk (optional) the cache mirrors every ``put`` as one shard::

    <cache_dir>/<weights_sha256>/<shard:05d>.safetensors   tensors stage2/stage3/pooled [N, ...] fp16,
                                                           metadata {"ids": JSON list of N sample ids}

and a new cache over the same folder loads every shard, so a rerun never calls the teachers again; the
shards of ``read_from`` folders (another run's cache) are loaded too, and never written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as save_safetensors_bytes
from tqdm import tqdm

from fusion.featstats import ChannelMoments, FeatureMoments, global_pool
from fusion.phis import phi_s
from fusion.views import plan_view
from specialists import Specialist
from geodata.files import atomic_write_bytes
from geodata.errors import InputError

__all__ = ["TARGETS", "BALANCES", "TeacherFeatures", "TeacherCache", "extract_teacher_features", "fill_cache"]

log = logging.getLogger(__name__)

TARGETS = ("stage2", "stage3", "pooled")
BALANCES = ("channel", "phi_s")  # how each teacher's targets are standardised (distill.balance)


@dataclass
class TeacherFeatures:
    """One teacher's raw targets for samples ``ids``: ``{target: [N, ...] float16}``."""

    ids: list[str]
    targets: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        missing = set(TARGETS) - set(self.targets)
        if missing:
            raise InputError(f"teacher features lack targets {sorted(missing)}")
        bad = {t: v.shape[0] for t, v in self.targets.items() if v.shape[0] != len(self.ids)}
        if bad:
            raise InputError(f"teacher features for {len(self.ids)} ids have row counts {bad}")


def _targets_of(features: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"stage2": features[-2].half(), "stage3": features[-1].half(), "pooled": global_pool(features[-1]).half()}


def extract_teacher_features(
    specialist: Specialist,
    batches: Iterable[Mapping],
    tolerance_nm: float,
    moments: FeatureMoments | None = None,
) -> TeacherFeatures:
    """Run ``specialist`` on its view of every batch it can read (``{"image", "bands", "id"}``); with
    ``moments``, its full multi-scale features also update them (its proxy feature statistics, measured in
    the same pass).

    Batches it cannot read are skipped; the result lists only the samples it saw.
    """
    ids: list[str] = []
    parts: dict[str, list[torch.Tensor]] = {t: [] for t in TARGETS}
    specialist.eval()
    for batch in batches:
        plan = plan_view(specialist.card.name, specialist.descriptors, batch["bands"], tolerance_nm)
        if not plan.applicable:
            continue
        with torch.inference_mode():
            features = specialist(plan.select(batch["image"]))
        if moments is not None:
            moments.update(features)
        targets = _targets_of(features)
        for t in TARGETS:
            parts[t].append(targets[t].cpu())
        ids.extend(batch["id"])
    for t in TARGETS:
        shapes = {tuple(p.shape[1:]) for p in parts[t]}
        if len(shapes) > 1:
            raise InputError(f"specialist {specialist.card.name!r}: target {t} has several shapes {sorted(shapes)}; "
                             "give proxy images of one size")
    return TeacherFeatures(ids, {t: torch.cat(parts[t]) if parts[t] else torch.empty(0, dtype=torch.float16)
                                 for t in TARGETS})


class TeacherCache:
    """fp16 targets per ``(weights_sha256, sample id)``, in memory and optionally on disk (module docstring)."""

    def __init__(self, directory: str | Path | None = None, read_from: Sequence[str | Path] = ()) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._shards: dict[str, list[dict[str, torch.Tensor]]] = {}
        self._rows: dict[str, dict[str, tuple[int, int]]] = {}
        self._written: dict[str, int] = {}  # shards this cache wrote per teacher: the next file's number
        for folder in [*map(Path, read_from), *([self.directory] if self.directory is not None else [])]:
            for path in sorted(folder.glob("*/*.safetensors")) if folder.is_dir() else ():
                self._load_shard(path)
        if self.directory is not None and self.directory.is_dir():
            self._written = {d.name: len(list(d.glob("*.safetensors"))) for d in self.directory.iterdir() if d.is_dir()}

    def _load_shard(self, path: Path) -> None:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            try:
                ids = json.loads(meta["ids"])
            except (KeyError, json.JSONDecodeError) as exc:
                raise InputError(f"{path}: teacher cache shard without a valid 'ids' metadata entry: {exc}") from None
            missing = set(TARGETS) - set(f.keys())
            if missing:
                raise InputError(f"{path}: teacher cache shard lacks tensors {sorted(missing)}")
            self._index(path.parent.name, TeacherFeatures(ids, {t: f.get_tensor(t) for t in TARGETS}))

    def _index(self, sha: str, features: TeacherFeatures) -> int:
        shards = self._shards.setdefault(sha, [])
        rows = self._rows.setdefault(sha, {})
        shards.append({t: v.to(torch.float16).contiguous() for t, v in features.targets.items()})
        for row, sample in enumerate(features.ids):
            rows[sample] = (len(shards) - 1, row)
        return len(shards) - 1

    def put(self, sha: str, features: TeacherFeatures) -> None:
        """Add a teacher's targets (overriding earlier ones for the same ids)."""
        if not features.ids:
            return
        shard = self._index(sha, features)
        if self.directory is not None:
            data = save_safetensors_bytes(self._shards[sha][shard], metadata={"ids": json.dumps(features.ids)})
            number = self._written.get(sha, 0)
            atomic_write_bytes(self.directory / sha / f"{number:05d}.safetensors", data)
            self._written[sha] = number + 1

    def has(self, sha: str, ids: Iterable[str]) -> bool:
        rows = self._rows.get(sha, {})
        return all(i in rows for i in ids)

    def num_samples(self, sha: str) -> int:
        return len(self._rows.get(sha, {}))

    def get(self, sha: str, ids: Sequence[str]) -> dict[str, torch.Tensor]:
        """Stacked fp16 targets of ``ids`` (all must be cached)."""
        rows = self._rows.get(sha, {})
        try:
            where = [rows[i] for i in ids]
        except KeyError as exc:
            raise KeyError(f"teacher {sha[:12]}: sample {exc} is not cached") from None
        shards = self._shards[sha]
        if len({s for s, _ in where}) == 1:
            index = torch.tensor([r for _, r in where])
            return {t: v.index_select(0, index) for t, v in shards[where[0][0]].items()}
        return {t: torch.stack([shards[s][t][r] for s, r in where]) for t in TARGETS}

    def share(self, partners: Mapping[str, Sequence[str]], shas: Iterable[str] | None = None) -> int:
        """Scene pairing: a sample without a teacher's targets takes those of its first partner that has them.

        ``partners`` maps a sample id to the ids of other views of the same place (e.g.
        :func:`fusion.data.scene_partners`: the other sensors' tiles of a scene), so the student learns to
        predict from a Sentinel-1 tile what a Sentinel-2 teacher saw on the Sentinel-2 tile of that scene.
        Samples that already have targets keep theirs. Applies to every cached teacher (or ``shas``) and
        returns the number of (teacher, sample) targets added. Partners of one sensor should share a grid,
        so that a batch's targets stack.
        """
        added = 0
        for sha in list(shas if shas is not None else self._rows):
            rows = self._rows.get(sha, {})
            groups: dict[tuple, tuple[list[str], list[dict[str, torch.Tensor]]]] = {}
            for sample, others in partners.items():
                source = None if sample in rows else next((p for p in others if p in rows), None)
                if source is None:
                    continue
                targets = self.get(sha, [source])
                ids, parts = groups.setdefault(tuple(tuple(v.shape) for v in targets.values()), ([], []))
                ids.append(sample)
                parts.append(targets)
            for ids, parts in groups.values():
                self.put(sha, TeacherFeatures(ids, {t: torch.cat([p[t] for p in parts]) for t in TARGETS}))
                added += len(ids)
        if added:
            log.info("scene pairing: %d teacher targets shared with other views of the same scene", added)
        return added

    def target_stats(self, sha: str, balance: str = "channel") -> dict[str, tuple[torch.Tensor, ...]]:
        """How to standardise each target of teacher ``sha``, measured over every cached sample:
        ``(mean, std)`` per channel (``balance="channel"``) or PHI-S's ``(mean, std, rotation)``."""
        if sha not in self._shards:
            raise KeyError(f"teacher {sha[:12]}: nothing cached")
        if balance not in BALANCES:
            raise InputError(f"balance must be one of {BALANCES}, got {balance!r}")
        moments = {t: ChannelMoments(covariance=balance == "phi_s") for t in TARGETS}
        for shard in self._shards[sha]:
            for t in TARGETS:
                moments[t].update(shard[t])
        if balance == "phi_s":
            return {t: phi_s(*m.covariance()) for t, m in moments.items()}
        return {t: m.result() for t, m in moments.items()}


def fill_cache(
    cache: TeacherCache,
    specialists: Mapping[str, Specialist],
    batches: Iterable[Mapping],
    tolerance_nm: float,
    moments: Mapping[str, FeatureMoments] | None = None,
) -> int:
    """Cache every local specialist's targets for every batch it can read and has not cached yet; the
    specialists named in ``moments`` run on every batch they can read, cached or not, and their features
    update their moments (their proxy feature statistics, in the same pass as their targets).

    Returns the number of (batch, teacher) extractions run; ``0`` means no teacher ran.
    """
    moments = moments or {}
    calls = 0
    for batch in tqdm(batches, desc="teacher features", unit="batch", leave=False):
        for name, spec in specialists.items():
            sha = spec.card.weights_sha256
            if not sha:
                raise InputError(f"specialist {spec.card.name!r} has no weights_sha256; save or load it first")
            cached = cache.has(sha, batch["id"])
            if cached and name not in moments:
                continue
            features = extract_teacher_features(spec, [batch], tolerance_nm, moments.get(name))
            if features.ids:
                if not cached:
                    cache.put(sha, features)
                calls += 1
    return calls

