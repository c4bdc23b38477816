"""Registry and ensemble: enrol/remove/subset, applicability, standardisation, removed = not run."""

import json

import pytest
import torch
from fusion_toys import TOLERANCE_NM, AERIAL_BANDS, S1_BANDS, S2_BANDS, make_registry, make_specialist, proxy_batches

from fusion import Ensemble, Registry
from fusion.registry import RegistryError


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return make_registry(tmp_path_factory.mktemp("fusion") / "registry")


def count_calls(ensemble: Ensemble) -> dict[str, int]:
    calls = {n: 0 for n in ensemble.names}
    for name, spec in ensemble.specialists.items():
        spec.register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    return calls


def test_registry_index_and_reload(registry):
    index = json.loads((registry.root / "index.json").read_text())
    assert [e["name"] for e in index["specialists"]] == ["s2", "s1", "aerial"]
    again = Registry(registry.root)
    assert again.names == registry.names
    assert again.load("s1").bands == S1_BANDS
    with pytest.raises(RegistryError, match="already enrolled"):
        registry.add(make_specialist("s1", "sentinel1_grd", S1_BANDS))
    with pytest.raises(RegistryError, match="no specialist 'nope'"):
        registry.load("nope")


def test_add_and_remove(tmp_path):
    reg = Registry.create(tmp_path / "r")
    reg.add(make_specialist("a", "sentinel1_grd", S1_BANDS))
    reg.add(make_specialist("b", "sentinel1_grd", S1_BANDS, seed=5))
    reg.remove("a")
    assert Registry(tmp_path / "r").names == ["b"] and not (tmp_path / "r" / "a").exists()


def test_plans_and_forward_only_applicable(registry):
    ensemble = Ensemble.from_registry(registry, tolerance_nm=TOLERANCE_NM)
    calls = count_calls(ensemble)
    plans = {p.specialist: p for p in ensemble.plan(S2_BANDS)}
    assert plans["s2"].applicable and plans["aerial"].applicable and not plans["s1"].applicable
    assert "VV" in plans["s1"].reason
    x = torch.rand(2, 4, 32, 32)
    features = ensemble(x, S2_BANDS)
    assert [f.shape[1] for f in features] == [80, 160, 320, 640]  # s2 + aerial concatenated
    assert ensemble.feature_dims(S2_BANDS) == (80, 160, 320, 640)
    assert calls == {"s2": 1, "aerial": 1, "s1": 0}
    assert ensemble.pooled(torch.rand(2, 2, 32, 32), S1_BANDS).shape == (2, 1200)  # means and stds of 4 scales
    assert ensemble.num_params(S1_BANDS) == ensemble.specialists["s1"].card.num_params < ensemble.num_params()
    with pytest.raises(ValueError, match="no specialist of the ensemble can read"):
        ensemble(torch.rand(1, 1, 32, 32), ("B11",))


def test_calibration_standardises_features(registry):
    ensemble = Ensemble.from_registry(registry, tolerance_nm=TOLERANCE_NM)
    batches = proxy_batches(S2_BANDS, n_batches=2) + proxy_batches(S1_BANDS, n_batches=2)
    stats = ensemble.calibrate(batches)
    assert set(stats) == {"s2", "s1", "aerial"}
    feats = torch.cat([ensemble(b["image"], b["bands"])[1] for b in batches[:2]])  # s2 + aerial, scale 1
    per_channel = feats.transpose(0, 1).reshape(feats.shape[1], -1)
    assert per_channel.mean(1).abs().max() < 1e-3
    assert torch.allclose(per_channel.std(1, unbiased=False), torch.ones(feats.shape[1]), atol=1e-2)
    registry.save_feature_stats("s2", stats["s2"])
    assert torch.equal(registry.feature_stats("s2").means[2], stats["s2"].means[2])


def test_calibration_reports_specialists_without_data(registry, caplog):
    measured = Ensemble.from_registry(registry, tolerance_nm=TOLERANCE_NM).calibrate(proxy_batches(S2_BANDS, n_batches=1))
    assert set(measured) == {"s2", "aerial"} and "['s1']" in caplog.text
    with pytest.raises(ValueError, match="no input that any of"):
        Ensemble.from_registry(registry, ["s1"], tolerance_nm=TOLERANCE_NM).calibrate(proxy_batches(S2_BANDS, n_batches=1))


def test_subset_runs_fewer_specialists(registry, tmp_path):
    small = registry.subset(["aerial"], tmp_path / "small")
    ensemble = Ensemble.from_registry(small.root, tolerance_nm=TOLERANCE_NM)
    calls = count_calls(ensemble)
    assert ensemble.names == ["aerial"]
    assert [f.shape[1] for f in ensemble(torch.rand(1, 4, 32, 32), AERIAL_BANDS)] == [40, 80, 160, 320]
    assert calls == {"aerial": 1}


def test_optional_fusion_uses_only_applicable_columns(registry):
    ensemble = Ensemble.from_registry(registry, fuse_dims=(16, 16, 16, 16), tolerance_nm=TOLERANCE_NM)
    out = ensemble(torch.rand(1, 2, 32, 32), S1_BANDS)
    assert [f.shape[1] for f in out] == [16, 16, 16, 16]
    s1_only = ensemble.specialist_features(torch.rand(1, 2, 32, 32), S1_BANDS)
    assert list(s1_only) == ["s1"]
