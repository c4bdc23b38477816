from pathlib import Path

import pytest
import torch

from geodata.sensors import (
    Band,
    BandError,
    equivalent_band,
    get_sensor,
    load_sensor_files,
    load_sensor_yaml,
    select_bands,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_builtin_sensors_have_declared_band_counts():
    assert get_sensor("sentinel2_l1c").num_bands == 13
    assert get_sensor("sentinel2_l1c").bands[-1] == "B8A"  # EuroSAT order
    assert get_sensor("sentinel2_l2a").num_bands == 12
    assert "B10" not in get_sensor("sentinel2_l2a").bands
    assert get_sensor("sentinel1_grd").bands == ("VV", "VH")
    assert get_sensor("s2") is get_sensor("sentinel2_l2a")
    assert all(b.is_sar for b in get_sensor("sentinel1_grd").band_objects())


def test_select_bands_reorders_by_name():
    have = ("B02", "B03", "B04", "B08")
    x = torch.arange(4.0).view(1, 4, 1, 1).expand(2, 4, 3, 3)
    out = select_bands(x, have, ["B08", "B04", "B02"])
    assert out[0, :, 0, 0].tolist() == [3.0, 2.0, 0.0]
    assert select_bands(x, have, have) is x


def test_select_bands_names_every_missing_band():
    x = torch.zeros(1, 2, 4, 4)
    with pytest.raises(BandError, match=r"missing bands \['B11', 'B12'\]"):
        select_bands(x, ("B02", "B03"), ["B02", "B11", "B12"])
    with pytest.raises(BandError, match="3 band names"):
        select_bands(x, ("B02", "B03", "B04"), ["B02"])


def test_equivalent_band_by_wavelength_and_polarisation():
    landsat = get_sensor("landsat8_oli").bands
    assert equivalent_band("B04", landsat) == "OLI_B4"
    assert equivalent_band("B8A", landsat) == "OLI_B5"
    assert equivalent_band("B05", landsat) is None  # red edge: no Landsat band within 30 nm
    assert equivalent_band("B04", ("VV", "VH")) is None
    assert equivalent_band("VH", ("VV", "VH")) == "VH"
    assert equivalent_band("RED", get_sensor("sentinel2_l2a").bands) == "B04"


def test_unknown_names_are_refused():
    with pytest.raises(BandError, match="unknown sensor 'nope'"):
        get_sensor("nope")
    with pytest.raises(ValueError, match="give wavelength_nm or range_nm"):
        Band("X")
    with pytest.raises(ValueError, match="not both"):
        Band("X", 500.0, "VV")


def test_sensor_from_yaml(tmp_path):
    sensors = load_sensor_files([CONFIGS / "sensors"])
    ps = get_sensor("planetscope_sd")
    assert ps in sensors and ps.num_bands == 8 and ps.scale == pytest.approx(1e-4)
    assert equivalent_band("B04", ps.bands) == "PS_RED"

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: broken\nbands:\n  - {name: ZZ}\n")
    with pytest.raises(ValueError, match="bad.yaml: invalid sensor description"):
        load_sensor_yaml(bad)
