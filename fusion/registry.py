"""The specialist registry: a folder of saved specialists plus ``index.json``.

```
<registry>/index.json                          {"version": 1, "specialists": [{"name", "path", "weights_sha256", ...}]}
<registry>/<name>/weights.safetensors, card.json   one saved specialist (specialists.save_specialist)
<registry>/feature_stats/<weights_sha256>.safetensors   its feature statistics on proxy data (optional)
```

A specialist whose weights stay at its institution is enrolled by its card alone (``holder`` names
the institution, its folder holds only ``card.json``): it takes part through features its holder
computes, and :meth:`Registry.load` refuses it.

Every write is atomic (temp file + rename). A pruned or selected registry is a new folder that
lists (and holds) only the kept specialists.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from fusion.featstats import FeatureStats
from fusion.views import plan_view
from geodata.files import atomic_write_bytes, atomic_write_text
from geodata.names import NAME_RULE, is_safe_name
from specialists import Specialist, SpecialistCard, load_specialist, save_specialist
from specialists.artifact import CARD_FILE, read_card
from geodata.errors import InputError

__all__ = ["Registry", "RegistryEntry", "RegistryError", "INDEX_FILE"]

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
REGISTRY_VERSION = 1
STATS_DIR = "feature_stats"


class RegistryError(InputError):
    """A registry folder or index is malformed, or a name is unknown or taken."""


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    path: str
    weights_sha256: str
    sensor: str
    bands: tuple[str, ...]
    task: str
    num_params: int
    holder: str = ""  # the institution that keeps the weights; empty: the weights are in the registry


class Registry:
    """An existing registry folder (use :meth:`create` for a new one)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        index = self.root / INDEX_FILE
        try:
            raw = json.loads(index.read_text())
        except FileNotFoundError:
            raise RegistryError(f"{index}: no registry index (create one with Registry.create)") from None
        except json.JSONDecodeError as exc:
            raise RegistryError(f"{index}: not valid JSON: {exc}") from exc
        if raw.get("version") != REGISTRY_VERSION:
            raise RegistryError(f"{index}: field 'version' is {raw.get('version')!r}, expected {REGISTRY_VERSION}")
        try:
            self._entries = {e["name"]: RegistryEntry(**{**e, "bands": tuple(e["bands"])}) for e in raw["specialists"]}
        except (KeyError, TypeError) as exc:
            raise RegistryError(f"{index}: malformed field 'specialists': {exc}") from exc
        for entry in self._entries.values():
            for field in ("name", "path", "weights_sha256"):
                if not is_safe_name(getattr(entry, field)):
                    raise RegistryError(f"{index}: specialist {entry.name!r} field {field!r} is "
                                        f"{getattr(entry, field)!r}; it must be {NAME_RULE} "
                                        "(it names a file or folder here)")

    @classmethod
    def create(cls, root: str | Path) -> "Registry":
        """A new, empty registry at ``root`` (which must not already hold one)."""
        root = Path(root)
        if (root / INDEX_FILE).exists():
            raise RegistryError(f"{root}: already holds a registry")
        atomic_write_text(root / INDEX_FILE, json.dumps({"version": REGISTRY_VERSION, "specialists": []}))
        return cls(root)

    # -- reading ---------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    @property
    def local_names(self) -> list[str]:
        """Specialists whose weights are in the registry."""
        return [n for n, e in self._entries.items() if not e.holder]

    @property
    def entries(self) -> list[RegistryEntry]:
        return list(self._entries.values())

    def readers(self, bands: Sequence[str], tolerance_nm: float) -> list[RegistryEntry]:
        """The members that can read an input of ``bands`` (a view exists at ``tolerance_nm``)."""
        return [e for e in self.entries if plan_view(e.name, self.card(e.name).descriptors(), bands, tolerance_nm).applicable]

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def entry(self, name: str) -> RegistryEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(f"registry {self.root}: no specialist {name!r}; it has {self.names}") from None

    def load(self, name: str, map_location: str = "cpu") -> Specialist:
        entry = self.entry(name)
        if entry.holder:
            raise RegistryError(f"registry {self.root}: the weights of {name!r} stay at {entry.holder!r}; "
                                "only its card is enrolled")
        specialist = load_specialist(self.root / entry.path, map_location=map_location)
        if specialist.card.weights_sha256 != entry.weights_sha256:
            raise RegistryError(f"{self.root / INDEX_FILE}: specialist {name!r} has sha256 "
                                f"{specialist.card.weights_sha256}, the index says {entry.weights_sha256}")
        return specialist

    def load_all(self, names: Iterable[str] | None = None, map_location: str = "cpu") -> dict[str, Specialist]:
        """The named specialists (default: every one whose weights are here)."""
        return {n: self.load(n, map_location) for n in (self.local_names if names is None else names)}

    def feature_stats(self, name: str) -> FeatureStats | None:
        path = self._stats_path(name)
        if not path.is_file():
            return None
        return FeatureStats.from_tensors(load_safetensors_bytes(path.read_bytes()), source=str(path))

    # -- writing ---------------------------------------------------------------------------------

    def add(self, specialist: Specialist, name: str | None = None) -> RegistryEntry:
        """Save ``specialist`` into the registry under ``name`` (default: its card name)."""
        name = self._new_name(name or specialist.card.name)
        save_specialist(specialist, self.root / name)
        card = specialist.card
        entry = RegistryEntry(name, name, card.weights_sha256, card.sensor, tuple(card.bands), card.task,
                              card.num_params)
        self._entries[name] = entry
        self._write_index()
        log.info("registry %s: added %s (%s, %s)", self.root, name, card.sensor, card.task)
        return entry

    def add_card(self, card: SpecialistCard, holder: str, name: str | None = None) -> RegistryEntry:
        """Enrol a specialist by its (validated, hashed) card alone; ``holder`` keeps the weights."""
        name = self._new_name(name or card.name)
        if not card.weights_sha256 or not holder:
            raise RegistryError(f"card-only enrolment of {name!r} needs the weights' sha256 and a holder")
        atomic_write_text(self.root / name / CARD_FILE, card.to_json())
        entry = RegistryEntry(name, name, card.weights_sha256, card.sensor, tuple(card.bands), card.task,
                              card.num_params, holder)
        self._entries[name] = entry
        self._write_index()
        log.info("registry %s: added the card of %s (weights stay at %s)", self.root, name, holder)
        return entry

    def card(self, name: str) -> SpecialistCard:
        return read_card(self.root / self.entry(name).path / CARD_FILE, SpecialistCard)

    def _new_name(self, name: str) -> str:
        if not is_safe_name(name):
            raise RegistryError(f"specialist name {name!r} must be {NAME_RULE} (it names a folder)")
        if name in self._entries:
            raise RegistryError(f"registry {self.root}: a specialist named {name!r} is already enrolled")
        return name

    def remove(self, name: str) -> None:
        entry = self.entry(name)
        del self._entries[name]
        self._write_index()
        shutil.rmtree(self.root / entry.path, ignore_errors=True)
        log.info("registry %s: removed %s", self.root, name)

    def save_feature_stats(self, name: str, stats: FeatureStats) -> None:
        data = save_safetensors_bytes(stats.to_tensors(), metadata={"specialist": name})
        atomic_write_bytes(self._stats_path(name), data)

    def subset(self, names: Iterable[str], root: str | Path) -> "Registry":
        """A new registry at ``root`` holding copies of ``names`` (and their feature statistics)."""
        names = list(names)
        for n in names:
            self.entry(n)
        out = Registry.create(root)
        for n in names:
            entry = self._entries[n]
            shutil.copytree(self.root / entry.path, out.root / entry.path)
            stats = self._stats_path(n)
            if stats.is_file():
                (out.root / STATS_DIR).mkdir(exist_ok=True)
                shutil.copy2(stats, out.root / STATS_DIR / stats.name)
            out._entries[n] = entry
        out._write_index()
        return out

    def _stats_path(self, name: str) -> Path:
        return self.root / STATS_DIR / f"{self.entry(name).weights_sha256}.safetensors"

    def _write_index(self) -> None:
        specialists = [{**asdict(e), "bands": list(e.bands)} for e in self._entries.values()]
        atomic_write_text(self.root / INDEX_FILE,
                          json.dumps({"version": REGISTRY_VERSION, "specialists": specialists}, indent=1))
