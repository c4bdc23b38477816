"""The any-sensor student: shapes on any band set (an unseen sensor included), normalisation, save/load."""

import math

import pytest
import torch

from fusion import load_student
from fusion.student import POLARISATIONS, Student, save_student
from geodata.sensors import Band, BandError, Sensor, builtin, get_band, using

LANDSAT = ("OLI_B1", "OLI_B2", "OLI_B3", "OLI_B4", "OLI_B5", "OLI_B6", "OLI_B7")
S2 = ("B02", "B03", "B04", "B08")


@pytest.fixture(scope="module")
def student():
    return Student.create(band_stats={"B02": [0.05, 0.02], "B04": [0.1, 0.05], "B08": [0.3, 0.1]}, seed=0).eval()


def test_unseen_sensor_gives_specialist_shaped_features(student):
    x = torch.rand(2, len(LANDSAT), 32, 32)
    with torch.no_grad():
        features = student(x, LANDSAT)
    assert [tuple(f.shape) for f in features] == [(2, 40, 8, 8), (2, 80, 4, 4), (2, 160, 2, 2), (2, 320, 1, 1)]
    assert student.feature_dims == (40, 80, 160, 320) and student.feature_reductions == (4, 8, 16, 32)
    assert student.pooled(x, LANDSAT).shape == (2, 1200)  # means and stds of 4 scales


def test_band_descriptors_change_the_kernel(student):
    x = torch.rand(2, 4, 32, 32)
    with torch.no_grad():
        a = student.pooled(x, S2)
        b = student.pooled(x, ("OLI_B2", "OLI_B3", "OLI_B4", "OLI_B6"))  # same pixels, other wavelengths
        sar = student.pooled(x[:, :2], ("VV", "VH"))
    assert not torch.allclose(a, b, atol=1e-4)
    assert sar.shape == (2, 1200)
    w_vv, _ = student.stem.kernel(("VV",))
    w_red, _ = student.stem.kernel(("B04",))
    assert not torch.allclose(w_vv, w_red)


def test_unseen_band_statistics_by_wavelength(student):
    # OLI_B3 (561.5 nm) lies between B02 (492 nm) and B04 (665 nm): interpolated in log-wavelength;
    # OLI_B7 (2200 nm) is past the last known band: clamped to B08's statistics.
    x = torch.full((1, 2, 4, 4), 0.3)
    out = student.normalise(x, ("OLI_B3", "OLI_B7"))
    assert out[0, 1, 0, 0].item() == pytest.approx(0.0, abs=1e-6)
    t = (math.log(561.5) - math.log(492.4)) / (math.log(664.6) - math.log(492.4))
    mean, std = 0.05 + t * 0.05, 0.02 + t * 0.03
    assert out[0, 0, 0, 0].item() == pytest.approx((0.3 - mean) / std, rel=1e-4)


def test_band_without_known_kind_is_instance_normalised(student):
    x = torch.randn(2, 2, 8, 8) * 3 - 12  # dB values; the table knows no SAR band
    out = student.normalise(x, ("VV", "VH"))
    assert out.mean(dim=(-2, -1)).abs().max() < 1e-5
    assert torch.allclose(out.std(dim=(-2, -1)), torch.ones(2, 2), atol=1e-4)


def test_save_and_one_line_load(student, tmp_path):
    save_student(student, tmp_path / "student")
    loaded = load_student(tmp_path / "student")
    x = torch.rand(1, len(LANDSAT), 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.pooled(x, LANDSAT), student.pooled(x, LANDSAT), atol=1e-6)
    assert not loaded.training
    assert loaded.card.band_stats == student.card.band_stats
    (tmp_path / "student" / "weights.safetensors").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="sha256"):
        load_student(tmp_path / "student")


def test_rejects_band_count_mismatch(student):
    with pytest.raises(KeyError, match="3 band names"):
        student(torch.rand(1, 4, 32, 32), ("B02", "B03", "B04"))


def test_inference_costs_a_plain_stem(student):
    from fusion_toys import make_specialist

    x = torch.rand(1, 4, 32, 32)
    student.eval()
    with torch.no_grad():
        first = student.pooled(x, S2)
        assert (S2, x.device) in student.stem._kernels  # generated once per band set
        assert torch.equal(student.pooled(x, S2), first)
    student.train()
    assert not student.stem._kernels
    student.eval()
    assert student.inference_params(S2) == make_specialist("s2", "sentinel2_l2a", S2).card.num_params
    assert student.card.num_params < 1.05 * student.inference_params(S2)  # the hypernetwork is small


def test_fewer_blocks_make_a_student_smaller_than_a_specialist_and_survive_a_reload(tmp_path):
    from fusion_toys import make_specialist

    small = Student.create(depths=(2, 2, 5, 2), seed=0).eval()
    specialist = make_specialist("s2", "sentinel2_l2a", S2)
    assert small.inference_params(S2) < specialist.card.num_params
    assert small.feature_dims == tuple(specialist.card.feature_dims)  # same scales and widths as atto
    save_student(small, tmp_path / "small")
    loaded = load_student(tmp_path / "small")
    assert loaded.card.depths == [2, 2, 5, 2]
    x = torch.rand(1, len(S2), 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded.pooled(x, S2), small.pooled(x, S2), atol=1e-6)
    with pytest.raises(ValueError, match="field 'depths'"):
        Student.create(depths=(2, 2, 0, 2))


def _centre_line_tokens(stem, bands):
    """The stem's tokens as computed before spectral ranges existed: one Fourier sample at each centre."""
    objects = [get_band(b) for b in bands]
    lo, hi = math.log(350.0), math.log(2600.0)
    optical = [i for i, b in enumerate(objects) if not b.is_sar]
    t = torch.tensor([(math.log(objects[i].wavelength_nm) - lo) / (hi - lo) for i in optical])
    angles = t[:, None] * stem.freqs[None, :]
    emb = stem.optical(torch.cat([angles.sin(), angles.cos()], dim=1))
    tokens = [None] * len(objects)
    for j, i in enumerate(optical):
        tokens[i] = emb[j]
    for i, band in enumerate(objects):
        if band.is_sar:
            tokens[i] = stem.polarisation.weight[POLARISATIONS.index(band.polarisation)]
    return stem.norm(stem.mixer(torch.stack(tokens)[None])[0])


def test_bands_without_a_range_embed_exactly_as_before(student):
    with torch.no_grad():
        for bands in (S2, LANDSAT, ("B02", "B08", "VV", "VH")):
            assert torch.equal(student.stem.tokens(bands), _centre_line_tokens(student.stem, bands))


def test_a_wide_band_is_not_its_centre_line(student):
    catalog = builtin().with_bands([Band("T_STEM_PAN", range_nm=(450, 900)), Band("T_STEM_LINE", 675.0),
                                    Band("T_STEM_NARROW", 675.0, bandwidth_nm=2.0)])
    with torch.no_grad(), using(catalog):
        pan, line, narrow = (student.stem.tokens((b, "B03"))[0] for b in ("T_STEM_PAN", "T_STEM_LINE", "T_STEM_NARROW"))
        x = torch.rand(1, 2, 32, 32)
        pooled_pan = student.pooled(x, ("T_STEM_PAN", "B03"))
        pooled_line = student.pooled(x, ("T_STEM_LINE", "B03"))
    assert (pan - line).norm() > 0.1 * line.norm()
    assert (narrow - line).norm() < 0.01 * line.norm()  # a narrow band is nearly its line
    assert not torch.allclose(pooled_pan, pooled_line, atol=1e-4)


def test_auxiliary_bands_are_refused(student):
    with using(builtin().with_bands([Band("T_STEM_QA", kind="quality")])), pytest.raises(BandError, match=r"bands \['T_STEM_QA'\] are auxiliary \(quality\)"):
        student(torch.rand(1, 2, 32, 32), ("B02", "T_STEM_QA"))
    with pytest.raises(BandError, match="auxiliary"):
        student.stem.tokens((Band("T_STEM_QA", kind="quality"),))
