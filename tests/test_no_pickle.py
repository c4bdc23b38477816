"""No unpickling of received data: a pickle payload (one that runs code when unpickled) is refused
where specialists enter, and no module of the project calls an unpickler."""

from __future__ import annotations

import ast
import hashlib
import json
import pickle
import tomllib
from pathlib import Path

import pytest
import torch

from fusion_toys import S2_BANDS, make_specialist
from specialists import ArtifactError, SpecialistCard, load_specialist, save_specialist
from specialists.artifact import CARD_FILE, WEIGHTS_FILE
from specialists.io import specialist_from_bytes

REPO = Path(__file__).resolve().parents[1]


def _payload_ran(marker: str) -> None:
    """What the hostile pickle does when unpickled: leave a marker file."""
    Path(marker).write_text("the pickle payload ran")


class _Hostile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return _payload_ran, (str(self.marker),)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """A marker path, and proof that the payload is live: plain unpickling runs it."""
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Hostile(control)))
    assert control.is_file(), "the hostile payload must run when unpickled, or the tests below prove nothing"
    return tmp_path / "payload-ran"


def _hostile_specialist(folder: Path, marker: Path) -> tuple[Path, dict]:
    """A saved specialist whose weights file is a ``torch.save`` pickle carrying the payload, with a card
    whose sha256 matches that file (so only the format check stands between it and an unpickler)."""
    save_specialist(make_specialist("hostile", "sentinel2_l2a", S2_BANDS), folder)
    weights = folder / WEIGHTS_FILE
    torch.save({"stem.weight": _Hostile(marker)}, weights)
    card = json.loads((folder / CARD_FILE).read_text())
    card["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (folder / CARD_FILE).write_text(json.dumps(card))
    return weights, card


def test_pickled_weights_file_is_refused_without_running(tmp_path: Path, marker: Path) -> None:
    weights, _ = _hostile_specialist(tmp_path / "spec", marker)
    with pytest.raises(ArtifactError, match="not a safetensors file") as err:
        load_specialist(tmp_path / "spec")
    assert str(weights) in str(err.value)
    assert not marker.exists(), "loading a specialist ran the pickle payload"
    # The project's rule for torch.load is safe against the same pickle (named .pt: torch.load reads a
    # .safetensors name with safetensors).
    pt = weights.rename(weights.with_suffix(".pt"))
    with pytest.raises(pickle.UnpicklingError):
        torch.load(pt, weights_only=True)
    assert not marker.exists()


def test_pickled_upload_is_refused_without_running(tmp_path: Path, marker: Path) -> None:
    weights, card = _hostile_specialist(tmp_path / "spec", marker)
    with pytest.raises(ArtifactError, match="lab-x weights: not a safetensors file"):
        specialist_from_bytes(json.dumps(card), weights.read_bytes(), "lab-x")
    assert not marker.exists(), "a received specialist ran the pickle payload"


@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
def test_pickled_card_is_refused_without_running(tmp_path: Path, marker: Path, protocol: int) -> None:
    payload = pickle.dumps(_Hostile(marker), protocol=protocol)
    with pytest.raises(ValueError, match="lab-x card: not valid JSON"):
        SpecialistCard.from_json(payload, source="lab-x card")
    with pytest.raises(ValueError, match="lab-x card: not valid JSON"):
        SpecialistCard.from_json(payload.decode("latin-1"), source="lab-x card")
    save_specialist(make_specialist("s2", "sentinel2_l2a", S2_BANDS), tmp_path / "spec")
    (tmp_path / "spec" / CARD_FILE).write_bytes(payload)
    with pytest.raises(ArtifactError, match="not valid JSON") as err:
        load_specialist(tmp_path / "spec")
    assert str(tmp_path / "spec" / CARD_FILE) in str(err.value)
    assert not marker.exists(), "reading a card ran the pickle payload"


# ---------------------------------------------------------------------------------------------
# No module calls an unpickler

UNPICKLERS = {
    f"{module}.{name}"
    for module in ("pickle", "_pickle", "cPickle", "dill", "cloudpickle")
    for name in ("load", "loads", "Unpickler")
} | {"joblib.load", "marshal.load", "marshal.loads", "shelve.open", "pandas.read_pickle", "torch.jit.load",
     "numpy.lib.format.read_array"}
TORCH_LOADS = {"torch.load", "torch.serialization.load"}
NUMPY_LOADS = {"numpy.load"}


def _imported_names(tree: ast.Module) -> dict[str, str]:
    """Local name -> the dotted name it stands for, from the module's imports."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                names[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(func: ast.expr, names: dict[str, str]) -> str | None:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return None
    return ".".join([names.get(func.id, func.id), *reversed(parts)])


def _keyword_is(call: ast.Call, name: str, value: bool) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def unpickling_calls(source: str, filename: str) -> list[str]:
    """``file:line: call`` for each call in ``source`` that may unpickle: an unpickler, ``torch.load``
    without ``weights_only=True``, ``numpy.load`` with ``allow_pickle`` other than ``False``."""
    tree = ast.parse(source, filename)
    names = _imported_names(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, names)
        bad = (name in UNPICKLERS
               or (name in TORCH_LOADS and not _keyword_is(node, "weights_only", True))
               or (name in NUMPY_LOADS and any(k.arg == "allow_pickle" for k in node.keywords)
                   and not _keyword_is(node, "allow_pickle", False)))
        if bad:
            found.append(f"{filename}:{node.lineno}: {name}")
    return found


def _project_modules() -> list[Path]:
    """Every .py file of the installed packages (pyproject's package list) and of benchmarks/."""
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    folders = [REPO / p.rstrip("*") for p in patterns] + [REPO / "benchmarks"]
    return sorted(f for folder in folders if folder.is_dir() for f in folder.rglob("*.py"))


def test_checker_finds_every_kind_of_unpickling() -> None:
    bad = """
import pickle, torch, numpy as np
import torch.serialization
from pickle import loads as unpack
from torch import load
pickle.load(f)
unpack(b)
torch.load(p)
torch.load(p, weights_only=False)
load(p, map_location="cpu")
torch.serialization.load(p)
np.load(p, allow_pickle=True)
np.load(p, allow_pickle=flag)
"""
    good = """
import json, numpy as np, torch
from safetensors.torch import load_file
torch.load(p, weights_only=True)
np.load(p)
np.load(p, allow_pickle=False)
json.loads(s)
load_file(p)
"""
    assert [f.split(": ")[1] for f in unpickling_calls(bad, "bad.py")] == [
        "pickle.load", "pickle.loads", "torch.load", "torch.load", "torch.load", "torch.serialization.load",
        "numpy.load", "numpy.load",
    ]
    assert unpickling_calls(good, "good.py") == []


def test_no_project_module_unpickles() -> None:
    modules = _project_modules()
    assert len(modules) > 20 and any(m.match("specialists/io.py") for m in modules)
    found = [hit for m in modules for hit in unpickling_calls(m.read_text(), str(m.relative_to(REPO)))]
    assert found == [], "calls that can unpickle data:\n" + "\n".join(found)
