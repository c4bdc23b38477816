"""Re-distillation after pruning (``pipeline.distill.redistil``): the pruned student starts from the full
student's weights and reads only the kept teachers' cached targets."""

import dataclasses

import pytest
import torch
from fusion_toys import make_registry

from fusion.data import ProxyBatches
from fusion.distill import DistillConfig
from fusion.ensemble import Ensemble
from fusion.student import load_student
from fusion.teacher_cache import TeacherCache
from geodata.synth import generate_world, load_world_config
from fusion.views import plan_view
from pipeline.distill import compare_students, distil, redistil, save_distilled
from specialists import Specialist

CONFIG = DistillConfig(epochs=1, init="random")


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """A tiny world, a registry of three toy specialists and the full student distilled from all three."""
    root = tmp_path_factory.mktemp("redistill")
    manifest = generate_world(load_world_config("tiny"), root / "world", progress=False)
    registry = make_registry(root / "registry")
    batches = ProxyBatches(manifest, None, None, 32, 8, seed=0)
    cache = TeacherCache(root / "cache")
    distilled = distil(registry, batches, cache, CONFIG, seed=0, tolerance_nm=50, name="student-toy")
    save_distilled(distilled, root / "full", root / "full" / "loss.png")
    return root, registry, batches, {e.name: e.weights_sha256 for e in registry.entries}


def _read_shas(monkeypatch) -> set[str]:
    """The teachers whose cached targets are read from now on (spies on the cache's reads)."""
    read: set[str] = set()
    for method in ("get", "target_stats"):
        original = getattr(TeacherCache, method)

        def spy(self, sha, *args, _original=original, **kwargs):
            read.add(sha)
            return _original(self, sha, *args, **kwargs)

        monkeypatch.setattr(TeacherCache, method, spy)
    return read


def test_pruned_student_starts_from_the_full_student_and_reads_only_kept_teachers(full, tmp_path, monkeypatch):
    root, registry, batches, shas = full
    pruned = registry.subset(["s2", "s1"], tmp_path / "pruned")
    shards = sorted(p.relative_to(root) for p in (root / "cache").rglob("*.safetensors"))
    full_state = load_student(root / "full" / "student").state_dict()

    still = redistil(pruned, batches, TeacherCache(root / "cache"), dataclasses.replace(CONFIG, lr=0.0),
                     full=root / "full", seed=0, tolerance_nm=50)
    assert all(torch.equal(v, still.student.state_dict()[k]) for k, v in full_state.items())  # its start: the full one

    read = _read_shas(monkeypatch)
    moved = redistil(pruned, batches, TeacherCache(root / "cache"), CONFIG, full=root / "full", seed=0, tolerance_nm=50)
    assert read == {shas["s2"], shas["s1"]}  # the dropped teacher's targets are never read
    assert moved.history.teacher_extractions == 0  # every kept teacher was cached: no teacher ran
    assert sorted(p.relative_to(root) for p in (root / "cache").rglob("*.safetensors")) == shards
    assert set(moved.history.targets_read) <= {"s2", "s1"} and sum(moved.history.targets_read.values()) > 0
    assert any(not torch.equal(v, moved.student.state_dict()[k]) for k, v in full_state.items())
    card = moved.student.card
    assert {t["name"] for t in card.teachers} == {"s2", "s1"} and card.name == "student-toy-pruned"
    assert card.distill["pruned_from"]["teachers_dropped"] == ["aerial"] and card.distill["total_epochs"] == 2

    costs = compare_students(root / "full", moved)
    assert sorted(costs["full"]["teachers"]) == ["aerial", "s1", "s2"] and costs["full"]["teacher_extractions"] > 0
    assert sorted(costs["pruned"]["teachers"]) == ["s1", "s2"] and costs["pruned"]["teacher_extractions"] == 0
    assert costs["full"]["targets_read"] > 0 and costs["pruned"]["epochs"] == 1 and costs["pruned"]["seconds"] > 0


def test_a_kept_teacher_missing_from_the_cache_is_extracted_alone(full, tmp_path):
    root, registry, batches, shas = full
    pruned = registry.subset(["s1"], tmp_path / "pruned")
    cache = TeacherCache()  # nothing cached: only the kept teacher runs
    moved = redistil(pruned, batches, cache, CONFIG, full=root / "full", seed=0, tolerance_nm=50)
    assert moved.history.teacher_extractions > 0
    assert cache.num_samples(shas["s1"]) > 0 and cache.num_samples(shas["s2"]) == cache.num_samples(shas["aerial"]) == 0
    assert [t["name"] for t in moved.student.card.teachers] == ["s1"]


def test_one_teacher_pass_fills_the_cache_and_measures_the_feature_statistics(full, tmp_path, monkeypatch):
    """Issue 22: a distillation runs each teacher once per proxy batch it reads: the targets it caches and the
    proxy feature statistics the ensemble standardises with come from the same forward pass."""
    _, _, batches, _ = full
    registry = make_registry(tmp_path / "registry")  # no feature statistics yet
    readable = {e.name: sum(plan_view(e.name, registry.card(e.name).descriptors(), b["bands"], 50).applicable
                            for b in batches) for e in registry.entries}
    forwards = dict.fromkeys(readable, 0)
    original = Specialist.forward

    def counted(self, x):
        forwards[self.card.name] += 1
        return original(self, x)

    monkeypatch.setattr(Specialist, "forward", counted)
    distilled = distil(registry, batches, TeacherCache(tmp_path / "cache"), CONFIG, seed=0, tolerance_nm=50, name="s")
    assert forwards == readable and min(readable.values()) > 0
    assert distilled.cache_fill_extractions == sum(readable.values())
    monkeypatch.setattr(Specialist, "forward", original)
    expected = Ensemble(registry.load_all(), tolerance_nm=50).calibrate(batches)
    for name, stats in expected.items():
        saved = registry.feature_stats(name)
        for got, want in zip([*saved.means, *saved.stds, saved.pooled_mean],
                             [*stats.means, *stats.stds, stats.pooled_mean]):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    monkeypatch.setattr(Specialist, "forward", counted)
    again = distil(registry, batches, TeacherCache(tmp_path / "cache"), CONFIG, seed=0, tolerance_nm=50, name="s")
    assert again.cache_fill_extractions == 0 and forwards == readable  # calibrated and cached: no teacher runs
