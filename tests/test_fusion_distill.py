"""Distillation: loss and standardisation math, teacher dropping, cache reuse, remote teachers, warm start."""

import json
import shutil

import pytest
import torch
from fusion_toys import TOLERANCE_NM, S1_BANDS, S2_BANDS, make_registry, proxy_batches

from fusion.adaptors import AdaptorHead, TeacherRef, load_adaptors, save_adaptors
from fusion.distill import DistillConfig, distill_student, drop_teachers, feature_loss, plot_history
from fusion.featstats import ChannelMoments
from fusion.phis import phi_s
from fusion.student import Student
from fusion.teacher_cache import TeacherCache, extract_teacher_features, fill_cache
from specialists.artifact import ArtifactError


@pytest.fixture(scope="module")
def specialists(tmp_path_factory):
    return make_registry(tmp_path_factory.mktemp("distill") / "registry").load_all()


@pytest.fixture(scope="module")
def batches():
    return proxy_batches(S2_BANDS, n_batches=2) + proxy_batches(S1_BANDS, n_batches=1)


def refs(specialists) -> list[TeacherRef]:
    return [TeacherRef.of(s, n) for n, s in specialists.items()]


def count_calls(specialists) -> dict[str, int]:
    calls = {n: 0 for n in specialists}
    for name, spec in specialists.items():
        spec.register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    return calls


def test_feature_loss_math():
    a = torch.randn(3, 8, 2, 2)
    assert feature_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    # opposite directions: cos = -1 -> 0.5 * 2; smooth-L1 of |2a| elementwise
    expected = 0.5 * 2 + 0.5 * torch.nn.functional.smooth_l1_loss(-a, a).item()
    assert feature_loss(-a, a).item() == pytest.approx(expected, rel=1e-5)
    v = torch.randn(4, 16)
    assert feature_loss(2 * v, v).item() == pytest.approx(0.5 * torch.nn.functional.smooth_l1_loss(2 * v, v).item(),
                                                          rel=1e-5)
    small = torch.randn(1, 8, 1, 1)
    assert feature_loss(small, torch.cat([small, small], -1)).item() == pytest.approx(0.0, abs=1e-6)  # resized


def test_target_standardisation():
    head = AdaptorHead((40, 80, 160, 320), (8, 8, 16, 32))
    stats = {"stage2": (torch.full((16,), 2.0), torch.full((16,), 4.0)),
             "stage3": (torch.zeros(32), torch.ones(32)), "pooled": (torch.ones(32), torch.full((32,), 0.5))}
    head.set_target_stats(stats)
    out = head.standardise({"stage2": torch.full((1, 16, 2, 2), 6.0, dtype=torch.float16),
                            "stage3": torch.zeros(1, 32, 1, 1), "pooled": torch.full((1, 32), 2.0)})
    assert torch.allclose(out["stage2"], torch.ones(1, 16, 2, 2))
    assert torch.allclose(out["pooled"], torch.full((1, 32), 2.0))


def test_teacher_dropping_keeps_the_hardest():
    g = torch.Generator().manual_seed(0)
    losses = {"a": 0.1, "b": 0.9, "c": 0.5}
    assert drop_teachers(losses, 1.0, g) == ["b"]
    assert drop_teachers(losses, 0.0, g) == ["a", "b", "c"]
    kept = [len(drop_teachers(losses, 0.5, g)) for _ in range(200)]
    assert 1 in kept and 3 in kept and sum(kept) / len(kept) == pytest.approx(2.0, abs=0.25)


def test_teachers_run_once_and_cache_survives_restart(specialists, batches, tmp_path):
    calls = count_calls(specialists)
    student = Student.create(band_stats={"B04": [0.2, 0.1], "VV": [0.2, 0.1]}, seed=0)
    cache = TeacherCache(tmp_path / "cache")
    assert fill_cache(cache, specialists, batches, tolerance_nm=TOLERANCE_NM) == 5
    adaptors, history = distill_student(student, refs(specialists), batches, cache,
                                        DistillConfig(epochs=2, drop_prob=0.0), seed=0)
    # s2 and aerial read the 2 Sentinel-2 batches, s1 the Sentinel-1 batch: once each, for both epochs
    assert calls == {"s2": 2, "aerial": 2, "s1": 1}
    assert set(history.teachers) == {"s2", "s1", "aerial"} and all(len(v) == 2 for v in history.teachers.values())
    assert all(f == [1.0, 1.0] for f in history.kept_fraction.values())
    # a new run over the same cache folder never calls the teachers
    reopened = TeacherCache(tmp_path / "cache")
    assert fill_cache(reopened, specialists, batches, tolerance_nm=TOLERANCE_NM) == 0
    distill_student(student, refs(specialists), batches, reopened, DistillConfig(epochs=1), seed=0, adaptors=adaptors)
    assert calls == {"s2": 2, "aerial": 2, "s1": 1}
    assert {t["name"] for t in student.card.teachers} == {"s2", "s1", "aerial"}
    assert student.card.distill["total_epochs"] == 3
    assert plot_history(history, tmp_path / "loss.png").stat().st_size > 1000


@pytest.mark.parametrize("balance", ["channel", "phi_s"])
def test_loss_decreases(specialists, balance):
    batches = proxy_batches(S2_BANDS, n_batches=1, batch=4)
    student = Student.create(band_stats={"B04": [0.2, 0.1]}, seed=0)
    cache = TeacherCache()
    fill_cache(cache, {"s2": specialists["s2"]}, batches, tolerance_nm=TOLERANCE_NM)
    adaptors, history = distill_student(student, refs({"s2": specialists["s2"]}), batches, cache,
                                        DistillConfig(epochs=6, lr=2e-3, balance=balance), seed=0)
    assert history.teachers["s2"][-1] < 0.8 * history.teachers["s2"][0]
    rotation = adaptors["s2"].stage3_rotation
    assert torch.equal(rotation, torch.eye(len(rotation))) == (balance == "channel")


def test_phi_s_gives_every_channel_unit_variance_with_one_scale_and_one_rotation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 40, generator=g) @ torch.randn(40, 40, generator=g) * torch.logspace(-2, 1, 40)
    moments = ChannelMoments(covariance=True)
    moments.update(x)
    mean, std, rotation = phi_s(*moments.covariance())
    assert torch.all(std == std[0])  # one scale for every channel
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(40), atol=1e-4, rtol=0)
    y = ((x - mean) / std) @ rotation.T
    torch.testing.assert_close(y.var(0, unbiased=False), torch.ones(40), atol=1e-3, rtol=0)
    assert x.var(0).max() / x.var(0).min() > 1e3  # per-channel variances were far apart
    with pytest.raises(ValueError, match="distill.balance must be one of"):
        DistillConfig(balance="pca")


def test_remote_teacher_features_and_warm_start(specialists, batches, tmp_path):
    # the partner keeps its weights: it extracts features on the proxy batches and sends them back
    partner = specialists["s1"]
    features = extract_teacher_features(partner, batches, tolerance_nm=TOLERANCE_NM)
    assert len(features.ids) == 4 and features.targets["stage3"].dtype == torch.float16
    cache = TeacherCache()
    ref = TeacherRef("s1-remote", partner.card.weights_sha256, partner.feature_dims)
    cache.put(ref.weights_sha256, features)
    student = Student.create(band_stats={"VV": [0.2, 0.1]}, seed=1)
    adaptors, _ = distill_student(student, [ref], batches, cache, DistillConfig(epochs=1), seed=0)
    assert list(adaptors) == ["s1-remote"]
    save_adaptors(adaptors, tmp_path / "adaptors")
    reloaded = load_adaptors(tmp_path / "adaptors")
    assert torch.equal(reloaded["s1-remote"].stage3_std, adaptors["s1-remote"].stage3_std)
    # a sealed artifact: a card edited after saving (another teacher's hash) is refused naming the field
    card_path = tmp_path / "adaptors" / "card.json"
    edited = json.loads(card_path.read_text())
    edited["teachers"][0]["weights_sha256"] = "0" * 64
    shutil.copytree(tmp_path / "adaptors", tmp_path / "edited")
    (tmp_path / "edited" / "card.json").write_text(json.dumps(edited))
    with pytest.raises(ArtifactError, match="field 'teachers'"):
        load_adaptors(tmp_path / "edited")
    # integrate mode: a new teacher joins, the known head is kept
    kept_head = reloaded["s1-remote"]
    fill_cache(cache, {"s2": specialists["s2"]}, batches, tolerance_nm=TOLERANCE_NM)
    adaptors2, history = distill_student(student, [*refs({"s2": specialists["s2"]}), ref], batches, cache,
                                         DistillConfig(epochs=1), seed=0, adaptors=reloaded)
    assert adaptors2["s1-remote"] is kept_head and set(adaptors2) == {"s1-remote", "s2"}
