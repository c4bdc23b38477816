"""Raster reading: physical units, validity, windows, band files, and every bad-input error."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from geodata.errors import RasterError
from geodata.raster import check_aligned, read_band_files, read_labelled, read_mask, read_tile, write_geotiff
from geodata.sensors import Band, Sensor, builtin, get_sensor

UTM33 = "EPSG:32633"


def eurosat_tile(shared_data: Path) -> Path:
    return shared_data / "eurosat-ms" / "Forest" / "Forest_1.tif"


def ben_s2_bands(shared_data: Path) -> dict[str, Path]:
    patch = shared_data / "bigearthnet-tiny" / "BigEarthNet-S2-Example" / "S2A_MSIL2A_20170613T101031_87_48"
    return {b: patch / f"{patch.name}_{b}.tif" for b in get_sensor("sentinel2_l2a").bands}


def write(path: Path, data: np.ndarray, res: float = 10.0, crs: str = UTM33, nodata=None) -> Path:
    return write_geotiff(path, data, from_origin(400000, 5000000, res, res), crs, nodata=nodata)


def s2_stack(value: int = 1000, bands: int = 13, size: int = 8) -> np.ndarray:
    return np.full((bands, size, size), value, dtype=np.uint16)


def test_read_tile_physical_units(shared_data):
    data, valid = read_tile(eurosat_tile(shared_data), "sentinel2_l1c")
    with rasterio.open(eurosat_tile(shared_data)) as src:
        raw = src.read()
    assert data.dtype == np.float32 and data.shape == (13, 64, 64) and valid.all()
    np.testing.assert_allclose(data, raw * 1e-4, rtol=1e-6)
    assert 0 <= data.min() and data.max() < 1.5


def test_windowed_and_centred_reads(shared_data):
    full = read_tile(eurosat_tile(shared_data), "sentinel2_l1c").data
    part = read_tile(eurosat_tile(shared_data), "sentinel2_l1c", window=Window(8, 4, 16, 32))
    np.testing.assert_array_equal(part.data, full[:, 4:36, 8:24])
    centre = read_tile(eurosat_tile(shared_data), "sentinel2_l1c", size=32)
    np.testing.assert_array_equal(centre.data, full[:, 16:48, 16:48])


def test_band_files_resampled_onto_finest_grid(shared_data):
    paths = ben_s2_bands(shared_data)
    raster = read_band_files(paths, "sentinel2_l2a")
    assert raster.data.shape == (12, 120, 120) and raster.valid.all()
    with rasterio.open(paths["B04"]) as src:
        np.testing.assert_allclose(raster.data[3], src.read(1) * 1e-4, rtol=1e-6)
    with rasterio.open(paths["B01"]) as src:  # 60 m band: upsampled mean stays the coarse mean
        assert abs(raster.data[0].mean() - src.read(1).mean() * 1e-4) < 2e-3
    window = Window(12, 24, 48, 36)  # aligned with the 60 m pixels
    part = read_band_files(paths, "sentinel2_l2a", window=window)
    np.testing.assert_allclose(part.data, raster.data[:, 24:60, 12:60], atol=1e-4)


def test_nodata_and_nan_pixels_are_invalid(tmp_path):
    stack = s2_stack()
    stack[:, 0, 0] = 0  # sensor nodata
    stack[4, 1, 1] = 0  # one band missing makes the pixel invalid
    raster = read_tile(write(tmp_path / "s2.tif", stack), "sentinel2_l1c")
    assert not raster.valid[0, 0] and not raster.valid[1, 1] and raster.valid.sum() == 62
    assert np.isnan(raster.data[:, 0, 0]).all() and np.allclose(raster.data[:, 2, 2], 0.1)
    sar = np.full((2, 8, 8), -12.0, dtype=np.float32)
    sar[1, 3, 3] = np.nan
    assert read_tile(write(tmp_path / "s1.tif", sar), "sentinel1_grd").valid.sum() == 63


def test_write_geotiff_is_atomic_and_georeferenced(tmp_path):
    path = write(tmp_path / "a.tif", s2_stack(), nodata=0)
    assert [p.name for p in tmp_path.iterdir()] == ["a.tif"]
    with rasterio.open(path) as src:
        assert src.crs == UTM33 and src.nodata == 0 and src.transform.c == 400000


# --- bad input ------------------------------------------------------------------------------------

def test_truncated_geotiff(tmp_path, shared_data):
    data = eurosat_tile(shared_data).read_bytes()
    half = tmp_path / "half.tif"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(RasterError, match=r"half\.tif: cannot read"):
        read_tile(half, "sentinel2_l1c")
    header = tmp_path / "header.tif"
    header.write_bytes(data[:100])
    with pytest.raises(RasterError, match=r"header\.tif: cannot read"):
        read_tile(header, "sentinel2_l1c")


def test_wrong_band_count(tmp_path):
    path = write(tmp_path / "three.tif", s2_stack(bands=3))
    with pytest.raises(RasterError, match=r"three\.tif: expected 12 bands for sensor sentinel2_l2a, found 3"):
        read_tile(path, "sentinel2_l2a")


def test_missing_band_file(tmp_path, shared_data):
    paths = ben_s2_bands(shared_data)
    del paths["B8A"]
    with pytest.raises(RasterError, match=r"missing band files for sensor sentinel2_l2a: \['B8A'\]"):
        read_band_files(paths, "sentinel2_l2a")
    paths["B8A"] = tmp_path / "gone_B8A.tif"
    with pytest.raises(RasterError, match=r"gone_B8A\.tif: file not found"):
        read_band_files(paths, "sentinel2_l2a")


def test_band_files_on_different_grids(tmp_path):
    vv = write(tmp_path / "vv.tif", np.zeros((1, 8, 8), np.float32))
    vh = write(tmp_path / "vh.tif", np.zeros((1, 8, 8), np.float32), crs="EPSG:32632")
    with pytest.raises(RasterError, match=r"vh\.tif: CRS EPSG:32632 differs from CRS EPSG:32633 of .*vv\.tif"):
        read_band_files({"VV": vv, "VH": vh}, "sentinel1_grd")
    vh = write(tmp_path / "vh.tif", np.zeros((1, 6, 6), np.float32))
    with pytest.raises(RasterError, match=r"vh\.tif: bounds .* differ from bounds .* of .*vv\.tif"):
        read_band_files({"VV": vv, "VH": vh}, "sentinel1_grd")


def test_twins_with_mismatched_shape_or_crs(tmp_path):
    s2 = write(tmp_path / "s2.tif", s2_stack(bands=1))
    small = write(tmp_path / "s1_small.tif", np.zeros((1, 4, 4), np.float32))
    with pytest.raises(RasterError, match=r"s1_small\.tif: shape 4x4 does not match shape 8x8 of its twin .*s2\.tif"):
        check_aligned(small, s2)
    other = write(tmp_path / "s1_crs.tif", np.zeros((1, 8, 8), np.float32), crs="EPSG:4326", res=1e-4)
    with pytest.raises(RasterError, match=r"s1_crs\.tif: CRS EPSG:4326 does not match CRS EPSG:32633 of its twin"):
        check_aligned(other, s2)
    check_aligned(write(tmp_path / "s1_ok.tif", np.zeros((1, 8, 8), np.float32)), s2)


def test_all_nodata_tile(tmp_path):
    path = write(tmp_path / "empty.tif", s2_stack(value=0))
    with pytest.raises(RasterError, match=r"empty\.tif: all pixels of the tile are nodata or NaN"):
        read_tile(path, "sentinel2_l1c")


def test_window_outside_or_too_large(tmp_path):
    path = write(tmp_path / "small.tif", s2_stack())
    with pytest.raises(RasterError, match=r"small\.tif: .* is outside the 8x8 raster"):
        read_tile(path, "sentinel2_l1c", window=Window(4, 4, 8, 8))
    with pytest.raises(RasterError, match=r"small\.tif: tile is 8x8, smaller than the requested size 16"):
        read_tile(path, "sentinel2_l1c", size=16)


def test_mask_labels_outside_class_list_and_shape(tmp_path):
    labels = np.zeros((1, 8, 8), np.uint8)
    labels[0, 2, 2], labels[0, 3, 3] = 7, 255
    path = write(tmp_path / "mask.tif", labels, nodata=255)
    read = read_mask(path, num_classes=8, ignore_index=99)
    assert read.dtype == np.int64 and read[2, 2] == 7 and read[3, 3] == 99
    with pytest.raises(RasterError, match=r"mask\.tif: labels \[7\] outside the 5 classes"):
        read_mask(path, num_classes=5)
    with pytest.raises(RasterError, match=r"mask\.tif: mask is 8x8 but its image is 16x16"):
        read_mask(path, num_classes=8, shape=(16, 16))


def test_image_and_mask_on_different_grids(tmp_path):
    image = write(tmp_path / "image.tif", s2_stack(size=16))
    mask = write(tmp_path / "mask.tif", np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(RasterError, match=r"mask\.tif: mask is 8x8 but its image is 16x16"):
        read_labelled(image, "sentinel2_l1c", mask, num_classes=2, size=8)
    mask = write(tmp_path / "mask.tif", np.ones((1, 16, 16), np.uint8))
    raster, labels = read_labelled(image, "sentinel2_l1c", mask, num_classes=2, window=Window(4, 4, 8, 8))
    assert raster.data.shape == (13, 8, 8) and labels.shape == (8, 8) and (labels == 1).all()


def aux_sensor():
    """Sentinel-2 L1C's 13 bands, then a QA60 bit mask and a cloud probability (percent)."""
    bands = [Band("QA60", kind="quality"), Band("CLOUD_PROB", kind="probability")]
    l1c = get_sensor("sentinel2_l1c")
    return builtin().with_sensor(Sensor("t_s2_qa", (*l1c.bands, "QA60", "CLOUD_PROB"), scale=1e-4, nodata=0,
                                        dtype="uint16"), bands).sensor("t_s2_qa")


def test_auxiliary_bands_read_with_the_file_but_not_returned(tmp_path):
    data = np.concatenate([s2_stack(1000, 13), np.zeros((2, 8, 8), np.uint16)])  # QA and cloud prob 0 = nodata
    data[:13, 0, 0] = np.arange(13) + 1
    raster = read_tile(write(tmp_path / "qa.tif", data), aux_sensor())
    assert raster.data.shape == (13, 8, 8) and raster.valid.all()  # auxiliary zeros are not nodata
    np.testing.assert_allclose(raster.data[:, 0, 0], (np.arange(13) + 1) * 1e-4, rtol=1e-6)
    with pytest.raises(RasterError, match=r"qa13\.tif: expected 15 bands for sensor t_s2_qa, found 13"):
        read_tile(write(tmp_path / "qa13.tif", s2_stack(1000, 13)), aux_sensor())


def test_complex_sar_as_intensity_db_or_refused(tmp_path):
    z = np.full((2, 8, 8), 0.1 + 0.0j, dtype=np.complex64)
    z[1] = 0.3 - 0.4j
    z[0, 0, 0] = 0  # no signal: -inf dB, invalid
    path = write(tmp_path / "slc.tif", z)
    with pytest.raises(RasterError, match=r"slc\.tif: complex values \(complex64\) but sensor sentinel1_grd does "
                                          r"not declare how to read them \(complex: intensity_db\)"):
        read_tile(path, "sentinel1_grd")
    slc = builtin().with_sensor(Sensor("t_s1_slc", ("VV", "VH"), complex="intensity_db")).sensor("t_s1_slc")
    raster = read_tile(path, slc)
    assert raster.data.dtype == np.float32 and not raster.valid[0, 0] and raster.valid.sum() == 63
    np.testing.assert_allclose(raster.data[0, 1:, 1:], -20.0, rtol=1e-5)  # |0.1|^2 = 0.01
    np.testing.assert_allclose(raster.data[1, 1:, 1:], 10 * np.log10(0.25), rtol=1e-5)
    files = {b: write(tmp_path / f"slc_{b}.tif", z[i]) for i, b in enumerate(("VV", "VH"))}
    np.testing.assert_array_equal(read_band_files(files, slc).data, raster.data)
    with pytest.raises(ValueError, match="complex 'phase' is not one of"):
        Sensor("t_bad", ("VV",), complex="phase")


def test_a_tile_never_makes_the_node_reach_the_network(tmp_path: Path, shared_data: Path) -> None:
    """Issue 20 row 7: a 'tile' that is a GDAL VRT pointing at /vsicurl/ URLs, or a /vsi path itself."""
    import http.server
    import threading

    hits: list[str] = []

    class Count(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            hits.append(self.path)
            self.send_response(404)
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Count)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"/vsicurl/http://127.0.0.1:{server.server_port}/scene.tif"
        vrt = tmp_path / "tile.tif"
        vrt.write_text(f'<VRTDataset rasterXSize="64" rasterYSize="64"><VRTRasterBand dataType="UInt16" band="1">'
                       f'<SimpleSource><SourceFilename relativeToVRT="0">{url}</SourceFilename><SourceBand>1'
                       f'</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>')
        for path in (vrt, url):
            with pytest.raises(RasterError) as err:
                read_tile(path, "sentinel2_l1c")
            assert str(path) in str(err.value)
    finally:
        server.shutdown()
    assert hits == []
    read_tile(eurosat_tile(shared_data), "sentinel2_l1c")  # a real GeoTIFF still reads


def test_a_huge_raster_is_refused_before_any_allocation(tmp_path: Path) -> None:
    """Issue 20 row 8: a small sparse file declaring 20,000,000 x 256 pixels."""
    path = tmp_path / "huge.tif"
    with rasterio.open(path, "w", driver="GTiff", width=20_000_000, height=256, count=1, dtype="uint8",
                       tiled=True, sparse_ok=True, crs=UTM33, transform=from_origin(400000, 5000000, 10, 10)):
        pass
    assert path.stat().st_size < 2**20
    with pytest.raises(RasterError, match="20000000 x 256 pixels exceed"):
        read_tile(path, "rgb")
