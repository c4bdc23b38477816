import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from geodata.dataset import TileDataset
from geodata.manifest import Manifest
from geodata.raster import read_tile, write_geotiff
from geodata.sensors import (
    SENSORS_ENV,
    Band,
    BandError,
    Catalog,
    Sensor,
    band_record,
    builtin,
    current,
    default,
    equivalent_band,
    get_band,
    get_sensor,
    load_sensor_files,
    load_sensor_yaml,
    select_bands,
    using,
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
    assert equivalent_band("B04", landsat, 30) == "OLI_B4"
    assert equivalent_band("B8A", landsat, 30) == "OLI_B5"
    assert equivalent_band("B05", landsat, 30) is None  # red edge: no Landsat band within 30 nm
    assert equivalent_band("B05", landsat, 50) == "OLI_B4"  # 49.6 nm apart
    assert equivalent_band("B04", ("VV", "VH"), 50) is None
    assert equivalent_band("VH", ("VV", "VH"), 50) == "VH"
    assert equivalent_band("RED", get_sensor("sentinel2_l2a").bands, 50) == "B04"


def test_sar_stands_in_only_at_the_same_frequency_band():
    catalog = (builtin()
               .with_sensor(Sensor("t_palsar", ("T_HH_L", "T_HV_L", "T_VV_X")),
                            [Band("T_HH_L", polarisation="HH", frequency_band="L"),
                             Band("T_HV_L", polarisation="HV", frequency_band="L"),
                             Band("T_VV_X", polarisation="VV")])
               .with_sensor(Sensor("t_csar", ("T_HH_C", "T_VV_Y")),
                            [Band("T_HH_C", polarisation="HH", frequency_band="C"), Band("T_VV_Y", polarisation="VV")]))
    assert equivalent_band("T_HH_C", ("T_HH_L", "T_HV_L"), 50, catalog) is None  # an L-band HH is no C-band HH
    assert equivalent_band("VV", ("T_VV_X",), 50, catalog) is None  # Sentinel-1 is C band; T_VV_X does not say
    assert equivalent_band("T_VV_Y", ("T_VV_X",), 50, catalog) == "T_VV_X"  # both undeclared
    # as descriptors, with no catalog at all: the same rule
    l_hh, c_hh = Band("HH_L", polarisation="HH", frequency_band="L"), Band("HH_C", polarisation="HH", frequency_band="C")
    assert equivalent_band(c_hh, [l_hh], 50) is None and equivalent_band(c_hh, [l_hh, c_hh], 50) == "HH_C"
    from fusion.views import plan_view
    assert not plan_view("c_band_hh", [c_hh], [l_hh], 50).applicable
    assert plan_view("l_band_hh", [Band("HH_L2", polarisation="HH", frequency_band="L")], [l_hh], 50).applicable


def test_unknown_names_are_refused():
    with pytest.raises(BandError, match="unknown sensor 'nope'"):
        get_sensor("nope")
    with pytest.raises(ValueError, match="give wavelength_nm or range_nm"):
        Band("X")
    with pytest.raises(ValueError, match="not both"):
        Band("X", 500.0, "VV")


def test_sensor_from_yaml(tmp_path):
    sensors = load_sensor_files([CONFIGS / "sensors"], Catalog().with_bands(builtin().bands.values()))
    ps = sensors.sensor("planetscope_sd")
    assert ps == get_sensor("planetscope_sd") and ps.num_bands == 8 and ps.scale == pytest.approx(1e-4)
    assert equivalent_band("B04", ps.bands, 50, sensors) == "PS_RED"

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: broken\nbands:\n  - {name: ZZ}\n")
    with pytest.raises(ValueError, match="bad.yaml: invalid sensor description"):
        load_sensor_yaml(bad)


# --- band descriptors, sensor band use, registration ------------------------------------------------

def yaml_file(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_band_descriptors():
    pan = Band("T_PAN", range_nm=[450, 900])
    assert pan.wavelength_nm == 675 and pan.range_nm == (450.0, 900.0) and pan.spectral_range == (450.0, 900.0)
    assert pan.kind == "spectral" and not pan.is_sar and not pan.is_auxiliary
    assert Band("T_NARROW", 665.0, bandwidth_nm=30).spectral_range == (650.0, 680.0)
    assert Band("T_LINE", 665.0).spectral_range is None
    hh = Band("T_HH", polarisation="HH", frequency_band="L")
    assert hh.is_sar and hh.kind == "sar"
    qa = Band("T_QA", kind="quality")
    assert qa.is_auxiliary and qa.wavelength_nm is None
    assert get_band("VV").frequency_band == "C"
    for bad, message in [
        (dict(range_nm=(900, 450)), "0 < lo < hi"),
        (dict(wavelength_nm=1000, range_nm=(450, 900)), "outside range_nm"),
        (dict(wavelength_nm=500, range_nm=(450, 900), bandwidth_nm=10), "range_nm or bandwidth_nm"),
        (dict(bandwidth_nm=10), "bandwidth_nm needs wavelength_nm"),
        (dict(wavelength_nm=500, frequency_band="C"), "frequency_band is for SAR"),
        (dict(polarisation="VV", frequency_band="Q"), "frequency_band 'Q' is not one of"),
        (dict(wavelength_nm=500, kind="mask"), "contradicts"),
        (dict(kind="cloud"), "kind .cloud. is not one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            Band("T_BAD", **bad)


def test_gsd_belongs_to_the_sensor_not_the_band(tmp_path):
    path = yaml_file(tmp_path / "radarsat.yaml", (
        "name: t_radarsat\nbands:\n"
        "  - {name: VV, polarisation: VV, frequency_band: C, gsd_m: 5}\n"
        "  - {name: VH, gsd_m: 5}\n"))
    catalog = load_sensor_files([path])
    sensor = catalog.sensor("t_radarsat")
    assert sensor.bands == ("VV", "VH") and sensor.band_gsd("VV") == 5 and sensor.band_gsd("VH") == 5
    assert [b.gsd_m for b in sensor.band_objects()] == [5, 5]
    assert get_sensor("sentinel1_grd").band_gsd("VV") == 10 and get_band("VV").gsd_m == 10
    assert load_sensor_files([path], catalog) == catalog  # identical again: fine
    with pytest.raises(BandError, match="unknown sensor 't_radarsat'"):
        get_sensor("t_radarsat")  # reading a file registers nothing
    assert min(get_sensor("sentinel2_l2a").bands, key=get_sensor("sentinel2_l2a").band_gsd) == "B02"


def test_conflicting_band_or_sensor_names_the_file_and_band(tmp_path):
    lband = yaml_file(tmp_path / "alos.yaml", "name: t_alos\nbands:\n  - {name: T_NEW, wavelength_nm: 512}\n"
                                              "  - {name: VV, polarisation: VV, frequency_band: L}\n")
    with pytest.raises(ValueError, match=r"alos\.yaml: invalid sensor description: band 'VV' conflicts with its "
                                         r"known definition: frequency_band 'L' \(known: 'C'\)"):
        load_sensor_files([lband])
    other = yaml_file(tmp_path / "ps.yaml", (CONFIGS / "sensors" / "planetscope_sd.yaml").read_text()
                      .replace("scale: 0.0001", "scale: 0.01"))
    with pytest.raises(ValueError, match=r"ps\.yaml: .*sensor 'planetscope_sd' conflicts .*scale 0\.01"):
        load_sensor_files([other])
    alias = yaml_file(tmp_path / "alias.yaml", "name: t_alias\naliases: [s2]\nbands: [B02]\n")
    with pytest.raises(ValueError, match=r"alias\.yaml: .*alias of sensor 't_alias' 's2' conflicts"):
        load_sensor_files([alias])
    typo = yaml_file(tmp_path / "typo.yaml", "name: t_typo\nbands:\n  - {name: T_TYPO, wavelenght_nm: 500}\n")
    with pytest.raises(ValueError, match=r"typo\.yaml: .*band 'T_TYPO': unknown fields \['wavelenght_nm'\]"):
        load_sensor_files([typo])
    assert "t_alias" not in current().sensors and {"T_NEW", "T_TYPO"}.isdisjoint(current().bands)  # nothing registered
    with pytest.raises(FileNotFoundError, match="sensor file not found: .*nope.yaml"):
        load_sensor_files([tmp_path / "nope.yaml"])


def test_one_file_many_sensors_and_folders(tmp_path):
    yaml_file(tmp_path / "dir" / "a.yaml", (
        "- name: t_pan\n  bands: [{name: T_PAN2, range_nm: [450, 900], gsd_m: 2}]\n"
        "- name: t_pan_rgb\n  bands: [T_PAN2, RED, GREEN, BLUE]\n"))
    yaml_file(tmp_path / "dir" / "b.yaml", "name: t_b\nbands: [B02]\n")
    catalog = load_sensor_files([tmp_path / "dir"])
    assert [n for n in catalog.sensors if n.startswith("t_")] == ["t_pan", "t_pan_rgb", "t_b"]
    assert catalog.sensor("t_pan_rgb").band_gsd("T_PAN2") == 2 and catalog.sensor("t_pan_rgb").band_gsd("RED") == 0.5


def test_env_sensors_register_at_import(tmp_path):
    a = yaml_file(tmp_path / "a" / "x.yaml", "name: t_env_a\nbands: [B04]\n")
    yaml_file(tmp_path / "b" / "y.yaml", "name: t_env_b\nbands: [B08]\n")
    env = {**os.environ, SENSORS_ENV: os.pathsep.join([str(a), str(tmp_path / "b")])}
    code = "import geodata.sensors as s; print(s.get_sensor('t_env_a').bands, s.get_sensor('t_env_b').bands)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "('B04',) ('B08',)"


def test_per_band_scale_reads_tci_beside_reflectance(tmp_path, shared_data):
    """The wildfire files hold 8-bit true-colour TCI_R/G/B, then B8 and B12 as reflectance x 10000."""
    path = yaml_file(tmp_path / "wildfire.yaml", (
        "name: t_s2_tci\nscale: 0.0001\nbands:\n"
        "  - {name: TCI_R, wavelength_nm: 664.6, scale: 0.00392156862745098}\n"
        "  - {name: TCI_G, wavelength_nm: 559.8, scale: 0.00392156862745098}\n"
        "  - {name: TCI_B, wavelength_nm: 492.4, scale: 0.00392156862745098}\n"
        "  - B08\n  - B12\n"))
    sensor = load_sensor_files([path]).sensor("t_s2_tci")
    assert sensor.calibration()[0] == (1 / 255,) * 3 + (1e-4,) * 2
    tif = min((shared_data / "wildfire-s2" / "post_fire").glob("*.tif"))
    raster = read_tile(tif, sensor)
    with rasterio.open(tif) as src:
        raw = src.read()
    np.testing.assert_allclose(raster.data[:3], raw[:3] / 255, rtol=1e-6)
    np.testing.assert_allclose(raster.data[3:], raw[3:] * 1e-4, rtol=1e-5)
    assert raster.data[:3].max() <= 1.0 and 0.0 < np.nanmean(raster.data[3]) < 1.0


def test_a_declared_product_sets_the_band_scale(tmp_path):
    """``product: tci`` reads 8-bit true colour as reflectance (255 is 0.2 in L2A, 0.3558 in L1C); it fixes the
    scale and offset, so giving either beside it is refused naming the file and band."""
    path = yaml_file(tmp_path / "tci.yaml", (
        "name: t_product\nscale: 0.0001\nbands:\n  - {name: T_TCI_R, wavelength_nm: 664.6, product: tci}\n"
        "  - {name: T_TCI1_R, wavelength_nm: 664.6, product: tci_l1c}\n  - B08\n"))
    sensor = load_sensor_files([path]).sensor("t_product")
    assert sensor.calibration() == ((0.2 / 255, 0.3558 / 255, 1e-4), (0.0, 0.0, 0.0))
    wildfire = load_sensor_files([CONFIGS / "samples" / "wildfire_sensor.yaml"]).sensor("sentinel2_tci_nir_swir")
    assert wildfire.calibration()[0] == (0.2 / 255,) * 3 + (1e-4,) * 2
    both = yaml_file(tmp_path / "both.yaml", "name: t_both\nbands:\n  - {name: T_TCI_G, wavelength_nm: 559.8, "
                                              "product: tci, scale: 0.004}\n")
    with pytest.raises(ValueError, match=r"both\.yaml: invalid sensor description: band 'T_TCI_G': product 'tci' "
                                         r"fixes its scale and offset; drop \['scale'\]"):
        load_sensor_files([both])


def test_auxiliary_bands_are_kept_in_file_order_but_not_image_bands():
    catalog = builtin().with_sensor(Sensor("t_aux", ("B02", "T_CLOUD", "B03")), [Band("T_CLOUD", kind="probability")])
    sensor = catalog.sensor("t_aux")
    assert sensor.num_bands == 3 and sensor.image_bands == ("B02", "B03")
    assert equivalent_band("T_CLOUD", sensor.bands, 50, catalog) == "T_CLOUD"  # by name only
    assert equivalent_band("T_CLOUD", ("B02",), 50, catalog) is None
    assert equivalent_band("B02", ("T_CLOUD",), 50, catalog) is None


def test_select_needs_only_the_selected_sensor_known():
    tiles = [{"id": "a", "sensor": "sentinel1_grd", "split": "train", "path": "a.tif"},
             {"id": "b", "sensor": "not_registered_anywhere", "split": "train", "path": "b.tif"}]
    manifest = Manifest.from_dict({"tiles": tiles})
    assert [t.id for t in manifest.select(sensor="s1")] == ["a"]
    assert manifest.splits(sensor="sentinel1_grd") == ["train"]
    with pytest.raises(BandError, match="unknown sensor 'not_registered_anywhere'; known sensors"):
        manifest.select(sensor="not_registered_anywhere")


def test_sensor_yaml_beside_a_manifest_is_in_its_catalog(tmp_path):
    data = np.full((2, 8, 8), 7, dtype=np.uint16)
    write_geotiff(tmp_path / "ds" / "t.tif", data, from_origin(0, 80, 10, 10), "EPSG:32633")
    yaml_file(tmp_path / "ds" / "sensors.yaml", "name: t_beside\nscale: 0.5\nbands: [B04, B08]\n")
    yaml_file(tmp_path / "ds" / "sensors" / "more.yaml", "name: t_beside_too\nbands: [B04]\n")
    (tmp_path / "ds" / "manifest.json").write_text(
        '{"tiles": [{"id": "t", "sensor": "t_beside", "split": "train", "path": "t.tif"}]}')
    manifest = Manifest.load(tmp_path / "ds" / "manifest.json")
    assert manifest.sensor("t_beside_too").bands == ("B04",)
    with pytest.raises(BandError, match="unknown sensor 't_beside_too'"):
        get_sensor("t_beside_too")  # the manifest's catalog, registered nowhere
    sample = TileDataset(manifest, "t_beside")[0]
    assert sample["bands"] == ("B04", "B08") and float(sample["image"].max()) == 3.5
    manifest.save(tmp_path / "copy" / "manifest.json")  # its user sensor, described in full beside the copy
    assert Manifest.load(tmp_path / "copy" / "manifest.json", builtin()).sensor("t_beside").scale == 0.5


def test_a_sensor_file_cannot_expand_itself(tmp_path: Path) -> None:
    """Issue 20 row 8: nested aliases (billion laughs) and oversized files are refused at once."""
    from geodata.sensors import load_sensor_yaml

    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]" for i in range(8)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="bomb.yaml: not valid YAML: aliases"):
        load_sensor_yaml(bomb)
    big = tmp_path / "big.yaml"
    big.write_text("#" * (2 << 20))
    with pytest.raises(ValueError, match="big.yaml: a sensor file is at most"):
        load_sensor_yaml(big)


# --- catalogs: values, never registered ----------------------------------------------------------

def test_a_catalog_is_an_immutable_value_and_merge_refuses_conflicts():
    catalog = builtin()
    with pytest.raises(TypeError):
        catalog.bands["T_X"] = Band("T_X", 500.0)  # type: ignore[index]
    with pytest.raises(TypeError):
        catalog.sensors["t_x"] = catalog.sensor("s2")  # type: ignore[index]
    mine = Catalog.from_records(sensors=[{"name": "t_cam", "bands": [{"name": "T_CAM_R", "wavelength_nm": 650},
                                                                      {"name": "B04", "wavelength_nm": 664.6}]}])
    merged = catalog.merge(mine, "lab-a")
    assert merged.sensor("t_cam").image_bands == ("T_CAM_R", "B04") and "t_cam" not in catalog.sensors
    clash = Catalog.from_records({"B04": {"name": "B04", "kind": "spectral", "wavelength_nm": 670.0, "gsd_m": 10}})
    with pytest.raises(ValueError, match=r"^lab-b: band 'B04' conflicts with its known definition: "
                                         r"wavelength_nm 670\.0 \(known: 664\.6\)$"):
        catalog.merge(clash, "lab-b")
    with using(merged):
        assert get_sensor("t_cam").bands == ("T_CAM_R", "B04")
    with pytest.raises(BandError):
        get_sensor("t_cam")  # outside the block: the default catalog again


@pytest.mark.parametrize("record, message", [
    ({"kind": "thermal", "wavelength_nm": 500}, "kind 'thermal' is not one of"),
    ({"wavelength_nm": float("nan")}, "wavelength_nm must be in"),
    ({"wavelength_nm": float("inf")}, "wavelength_nm must be in"),
    ({"wavelength_nm": 500, "gsd_m": 0}, "gsd_m must be in"),
    ({"wavelength_nm": 500, "gsd_m": 1e9}, "gsd_m must be in"),
    ({"polarisation": "XY"}, "polarisation 'XY' is not one of"),
    ({"name": "T_OTHER", "wavelength_nm": 500}, "descriptor must be a mapping of that band"),
    ({}, "a descriptor needs its wavelength"),
])
def test_band_descriptors_are_checked(record, message):
    with pytest.raises(ValueError, match=message):
        Catalog.from_records({"T_D": {"name": "T_D", **record} if "name" not in record else record})


def test_band_records_round_trip():
    for band in [*builtin().bands.values(), Band("T_PAN", range_nm=(450, 900), gsd_m=2),
                 Band("T_OFF", 600.0, range_nm=(500, 800)), Band("T_N", 665.0, bandwidth_nm=30),
                 Band("T_Q", kind="quality"), Band("T_HH", polarisation="HH", frequency_band="L")]:
        (again,) = Catalog.from_records({band.name: band_record(band)}).bands.values()
        assert again == band and again.gsd_m == band.gsd_m
    for name in sorted({s.name for s in default().sensors.values()}):
        described = Catalog.from_records(sensors=[default().describe(name)])
        assert described.sensor(name) == default().sensor(name) and described.sensor(name).gsd == default().sensor(name).gsd


def test_no_module_assigns_into_a_global_sensor_table():
    """Issue 22: sensors are values; nothing outside geodata/sensors.py registers a sensor or band, and that
    module keeps no mutable table (only the cached built-in catalog and the scoped current one)."""
    import re
    root = Path(__file__).resolve().parents[1]
    forbidden = re.compile(r"\b(register_sensor|register_sensors_beside|write_sensors_beside|_SOURCES|_ACTIVE)\b"
                           r"|\b(SENSORS|BANDS)\s*(\[|\.(setdefault|pop|update|clear)\()|geodata\.sensors\.\w+\s*=[^=]")
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("tests/", ".")) or rel == "geodata/sensors.py":
            continue
        found += [f"{rel}:{i}: {line.strip()}" for i, line in enumerate(path.read_text().splitlines(), 1)
                  if forbidden.search(line)]
    assert not found, found
    source = (root / "geodata" / "sensors.py").read_text()
    assert not re.search(r"^[A-Z_]+\s*:\s*dict\[|^[A-Z_]+\s*=\s*\{\}", source, re.M), "a mutable module-level table"


def test_one_tolerance_no_library_default():
    """Issue 22: the band-equivalence tolerance has one default, the run setting
    (``ExperimentConfig.tolerance_nm``): no function or dataclass field of the library packages has one."""
    import ast
    root = Path(__file__).resolve().parents[1]
    found = []
    for package in ("geodata", "specialists", "fusion", "pipeline", "wire", "clients", "server"):
        for path in sorted((root / package).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    args = node.args
                    positional = [*args.posonlyargs, *args.args]
                    defaulted = positional[len(positional) - len(args.defaults):] if args.defaults else []
                    defaulted += [a for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
                    found += [f"{rel}:{a.lineno}" for a in defaulted if a.arg == "tolerance_nm"]
                elif (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                      and node.target.id == "tolerance_nm" and node.value is not None
                      and rel != "pipeline/settings.py"):
                    found.append(f"{rel}:{node.lineno}")
            assert "DEFAULT_TOLERANCE" not in path.read_text(), rel
    assert not found, found
    from pipeline.settings import ExperimentConfig
    assert ExperimentConfig().tolerance_nm == ExperimentConfig.tolerance_nm == 50.0


def test_only_entry_points_open_a_catalog_scope():
    """Issue 22: inside the library catalogs travel as values; a ``using(catalog)`` block is opened only where
    names enter from outside: the run, a node's handlers, a command, a TerraTorch backbone."""
    import re
    root = Path(__file__).resolve().parents[1]
    entries = {"server/run.py", "clients/handlers.py", "eosfed/cli.py", "fusion/terratorch.py", "geodata/sensors.py"}
    opened = sorted(rel for path in root.rglob("*.py")
                    if not (rel := path.relative_to(root).as_posix()).startswith(("tests/", ".", "benchmarks/"))
                    and re.search(r"\busing\(", path.read_text()))
    assert set(opened) <= entries, sorted(set(opened) - entries)
