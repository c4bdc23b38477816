"""One settings tree under three callers: ``distill.depths``, ``distill.weight_decay`` and
``train.warmup_epochs`` set through the run config, the ``eosfed`` commands and the reference
benchmark's config all take effect (a student of those depths, an optimiser with that weight decay, a
first step below the learning rate or the warm-up recorded), and every default lives in one place."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml
from flower_harness import InProcessGrid
from fusion_toys import make_registry
from tiny_run import simulated_nodes, tiny_run_config

from eosfed.cli import main
from fusion import Registry, load_student
from fusion.distill import DistillConfig
from geodata.manifest import Manifest
from geodata.synth import generate_world, load_world_config
from pipeline.settings import RunSettings, load_experiment
from server.run import run_experiment
from specialists import load_specialist

DEPTHS = [1, 1, 2, 1]
WEIGHT_DECAY = 0.3
WARMUP = 2.0
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(load_world_config("tiny"), out, progress=False)
    return out / "manifest.json"


def _distilled(folder: Path) -> tuple[list[int], float]:
    history = json.loads((folder / "distill_history.json").read_text())
    return load_student(folder / "student").card.depths, history["optimizer"]["weight_decay"]


def test_run_config_settings_take_effect(tmp_path: Path) -> None:
    extra = (f"distill.depths=[{','.join(map(str, DEPTHS))}] distill.weight_decay={WEIGHT_DECAY} "
             f"train.warmup_epochs={WARMUP} stop_after=distill")
    run_dir = run_experiment(InProcessGrid(simulated_nodes(2)), tiny_run_config(tmp_path, extra), flower_run_id=1)
    assert _distilled(run_dir) == (DEPTHS, WEIGHT_DECAY)
    first_round = json.loads((run_dir / "phases" / "train.json").read_text())["groups"]
    for group in first_round.values():
        record = group["history"][0]
        assert all(m["first_lr"] < record["lr"] for m in record["institutions"].values())  # warming up


def test_command_settings_take_effect(tmp_path: Path, world: Path) -> None:
    make_registry(tmp_path / "registry")
    assert main(["distill", "--registry", str(tmp_path / "registry"), "--proxy", str(world), "--out",
                 str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4", "--size", "32",
                 "--depths", *map(str, DEPTHS), "--weight-decay", str(WEIGHT_DECAY)]) == 0
    assert _distilled(tmp_path / "run") == (DEPTHS, WEIGHT_DECAY)
    assert main(["train-specialist", "--manifest", str(world), "--sensor", "sentinel2_l2a", "--task", "scene",
                 "--out", str(tmp_path / "spec"), "--epochs", "1", "--size", "32",
                 "--warmup-epochs", str(WARMUP)]) == 0
    assert load_specialist(tmp_path / "spec").card.extra["train_config"]["warmup_epochs"] == WARMUP


def _reference():
    spec = importlib.util.spec_from_file_location("reference", ROOT / "benchmarks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reference"] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def test_benchmark_config_settings_take_effect(tmp_path: Path, world: Path) -> None:
    reference = _reference()
    raw = yaml.safe_load((ROOT / "configs" / "benchmark" / "reference.yaml").read_text())
    raw["distill"].update(depths=DEPTHS, weight_decay=WEIGHT_DECAY, epochs=1)
    raw["train"].update(warmup_epochs=WARMUP)
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(raw))
    cfg = reference.load_config(tmp_path / "bench.yaml", quick=False)
    assert cfg.distill == DistillConfig(**{**dataclasses.asdict(DistillConfig()), **raw["distill"]})
    assert cfg.train["warmup_epochs"] == WARMUP
    proxy = Manifest.load(world)
    cfg = dataclasses.replace(cfg, proxy={**cfg.proxy, "sensors": ["sentinel2_l2a"], "batch_size": 4})
    make_registry(tmp_path / "registry")
    student, _ = reference.distill(cfg, Registry(tmp_path / "registry"), "key", proxy, tmp_path / "out", "cpu")
    assert _distilled(student.parent) == (DEPTHS, WEIGHT_DECAY)


def test_one_default_per_setting() -> None:
    """The composed run config holds no default of its own: each value is the dataclass field's."""
    cfg, _ = load_experiment(RunSettings("default", (), "x"))
    assert cfg.distill == DistillConfig()
    assert (ROOT / "configs" / "config.yaml").read_text().count(":") <= 8  # only the defaults list
