"""Scene pairing: other sensors' tiles of a scene take a teacher's targets from the tile it could read."""

import torch
from fusion_toys import TOLERANCE_NM, S1_BANDS, S2_BANDS, make_specialist, proxy_batches

from fusion.data import scene_partners
from fusion.teacher_cache import TARGETS, TeacherCache, fill_cache
from geodata.manifest import Manifest, TileEntry
from specialists.io import save_specialist


def _tile(scene: str, sensor: str, split: str = "train") -> TileEntry:
    return TileEntry(id=f"{scene}-{sensor}", sensor=sensor, split=split, path=f"{scene}/{sensor}.tif", scene=scene)


def test_scene_partners_pairs_other_sensors_of_the_same_scene():
    manifest = Manifest(tasks={}, tiles=[
        _tile("a", "sentinel2_l2a"), _tile("a", "sentinel1_grd"), _tile("a", "landsat8_oli"),
        _tile("b", "sentinel2_l2a"), _tile("c", "sentinel1_grd", split="test"), _tile("c", "sentinel2_l2a", "test"),
    ])
    partners = scene_partners(manifest, ["s2", "sentinel1_grd"], split="train")
    assert partners == {"a-sentinel2_l2a": ["a-sentinel1_grd"], "a-sentinel1_grd": ["a-sentinel2_l2a"]}
    assert scene_partners(manifest)["a-landsat8_oli"] == ["a-sentinel2_l2a", "a-sentinel1_grd"]


def test_share_gives_sar_tiles_the_optical_teachers_targets(tmp_path):
    s2 = make_specialist("s2", "sentinel2_l2a", S2_BANDS, seed=1)
    save_specialist(s2, tmp_path / "s2")
    optical = proxy_batches(S2_BANDS, n_batches=1, batch=3, prefix="opt")[0]
    radar = proxy_batches(S1_BANDS, n_batches=1, batch=3, prefix="sar")[0]
    cache = TeacherCache(tmp_path / "cache")
    fill_cache(cache, {"s2": s2}, [optical, radar], tolerance_nm=TOLERANCE_NM)
    sha = s2.card.weights_sha256
    assert not cache.has(sha, radar["id"])  # the optical teacher cannot read radar tiles

    partners = {sar: [opt] for sar, opt in zip(radar["id"], optical["id"])}
    partners[optical["id"][0]] = [radar["id"][0]]  # already cached: keeps its own targets
    assert cache.share(partners) == 3
    assert cache.has(sha, radar["id"])
    mine, theirs = cache.get(sha, optical["id"]), cache.get(sha, radar["id"])
    for target in TARGETS:
        torch.testing.assert_close(theirs[target], mine[target])
    assert cache.share(partners) == 0  # nothing left to share
    assert TeacherCache(tmp_path / "cache").has(sha, radar["id"])  # mirrored on disk like any put
