"""Broken data at a declared partner (files made by the test): the partner's failure names the file and
the problem, and the run goes on with the good partner, whose group still trains."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import rasterio

from flower_harness import InProcessGrid, partner_manifest
from geodata.manifest import Manifest, TileEntry
from geodata.raster import write_geotiff
from geodata.sensors import get_sensor
from server.run import run_experiment

GOOD, BROKEN = 1, 2
GROUP = "sentinel2_l1c-scene"


def _first_train(manifest: Manifest) -> TileEntry:
    return next(t for t in manifest.tiles if t.split == "train")


def _profile(tile: TileEntry) -> tuple[np.ndarray, rasterio.Affine, rasterio.crs.CRS]:
    with rasterio.open(tile.path) as src:
        return src.read(), src.transform, src.crs


def _truncated(manifest: Manifest, folder: Path) -> tuple[str, str]:
    tile = _first_train(manifest)
    broken = folder / "truncated.tif"
    data = Path(tile.path).read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    tile.path = str(broken)
    return str(broken), "cannot read"


def _wrong_band_count(manifest: Manifest, folder: Path) -> tuple[str, str]:
    tile = _first_train(manifest)
    data, transform, crs = _profile(tile)
    tile.path = str(write_geotiff(folder / "four_bands.tif", data[:4], transform, crs))
    return tile.path, "expected 13 bands for sensor sentinel2_l1c, found 4"


def _all_nan(manifest: Manifest, folder: Path) -> tuple[str, str]:
    tile = _first_train(manifest)
    data, transform, crs = _profile(tile)
    tile.path = str(write_geotiff(folder / "all_nan.tif", np.full(data.shape, np.nan, np.float32), transform, crs))
    return tile.path, "all pixels of the tile are nodata or NaN"


def _all_nodata(manifest: Manifest, folder: Path) -> tuple[str, str]:
    tile = _first_train(manifest)
    data, transform, crs = _profile(tile)
    nodata = get_sensor(tile.sensor).nodata
    if nodata is None:
        nodata = 0
    blank = np.full(data.shape, nodata, data.dtype)
    tile.path = str(write_geotiff(folder / "all_nodata.tif", blank, transform, crs, nodata=nodata))
    return tile.path, "all pixels of the tile are nodata or NaN"


def _label_outside(manifest: Manifest, folder: Path) -> tuple[str, str]:
    tile = _first_train(manifest)
    tile.targets = {"scene": 42}
    return tile.id, "label 42 outside the 10 classes"


def _empty_train(manifest: Manifest, folder: Path) -> tuple[str, str]:
    for tile in manifest.tiles:
        if tile.split == "train":
            tile.split = "val"
    return "lab-bad", "no 'train' tiles"


def _mismatched_grids(manifest: Manifest, folder: Path) -> tuple[str, str]:
    """One band file of a per-band tile lies on a shifted grid (as when S1 and S2 files disagree)."""
    tile = _first_train(manifest)
    data, transform, crs = _profile(tile)
    bands = get_sensor(tile.sensor).bands
    paths = {}
    for i, band in enumerate(bands):
        shift = rasterio.Affine.translation(640, 0) if band == "B12" else rasterio.Affine.identity()
        paths[band] = str(write_geotiff(folder / f"band_{band}.tif", data[i], shift @ transform, crs))
    tile.path, tile.band_paths = None, paths
    return paths["B12"], "differ from bounds"


CASES: dict[str, Callable[[Manifest, Path], tuple[str, str]]] = {
    "truncated_geotiff": _truncated,
    "wrong_band_count": _wrong_band_count,
    "all_nan_tile": _all_nan,
    "all_nodata_tile": _all_nodata,
    "label_outside_classes": _label_outside,
    "empty_train_split": _empty_train,
    "mismatched_grids": _mismatched_grids,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_partner_data_is_named_and_run_goes_on(tmp_path: Path, shared_data: Path, case: str) -> None:
    good = partner_manifest(shared_data, tmp_path / "lab-good", 1)
    bad_dir = tmp_path / "lab-bad"
    manifest = Manifest.load(partner_manifest(shared_data, bad_dir, 1))
    where, problem = CASES[case](manifest, bad_dir)
    bad = manifest.save(bad_dir / "manifest.json")

    def node(name: str, path: Path) -> dict[str, str]:
        return {"institution": name, "sensor": "sentinel2_l1c", "task": "scene", "data-path": str(path),
                "store": str(tmp_path / name / "store")}

    out = tmp_path / "outputs"
    config = {
        "experiment": "quick",
        "overrides": (f"~institutions output_dir={out} federation.min_nodes=2 federation.reply_timeout_s=5 "
                      "train.min_replies=1 train.rounds=1 train.max_steps=1 train.batch_size=4 stop_after=train"),
        "run-name": "bad-data",
    }
    grid = InProcessGrid({GOOD: node("lab-good", good), BROKEN: node("lab-bad", bad)})
    run_dir = run_experiment(grid, config, flower_run_id=1)

    roster = json.loads((run_dir / "phases" / "discover.json").read_text())
    trained = json.loads((run_dir / "phases" / "train.json").read_text())
    failures = ([f for f in roster["failures"] if f["node_id"] == BROKEN]
                + [f for f in trained["failures"] if f["institution"] == "lab-bad"])
    assert failures, f"no failure recorded for the broken partner: {roster['failures']} {trained['failures']}"
    reasons = " | ".join(f["reason"] for f in failures)
    assert where in reasons and problem in reasons, reasons
    card = json.loads((run_dir / "specialists" / GROUP / "card.json").read_text())
    history = card["extra"]["federation"]["history"]
    assert [sorted(r["institutions"]) for r in history] == [["lab-good"]]  # averaged from the good partner only
    assert card["extra"]["federation"]["rounds_applied"] == 1
    assert all(f["institution"] in (None, "lab-bad") for f in roster["failures"] + trained["failures"])
