"""Tile read speed through TileDataset on the real data in ../shared/data (median of 3 runs).

Usage: python benchmarks/read_speed.py [--passes 5]
Writes benchmarks/results/read_speed.json and read_speed.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from geodata.dataset import TileDataset
from geodata.files import atomic_write_text
from geodata.readers.bigearthnet import build_bigearthnet_manifest
from geodata.readers.eurosat import build_eurosat_manifest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"


def tiles_per_second(dataset: TileDataset, passes: int, runs: int = 3) -> float:
    """Median over ``runs`` of tiles read per second, each run reading every tile ``passes`` times."""
    for i in range(len(dataset)):  # warm the file cache
        dataset[i]
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(passes):
            for i in range(len(dataset)):
                dataset[i]
        rates.append(passes * len(dataset) / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        eurosat = build_eurosat_manifest(DATA / "eurosat-ms", Path(tmp) / "eurosat")
        ben_root = DATA / "bigearthnet-tiny"
        ben = build_bigearthnet_manifest(ben_root / "BigEarthNet-S2-Example", Path(tmp) / "ben",
                                         s1_root=ben_root / "BigEarthNet-S1-Example")
        rows = [
            ("EuroSAT-MS 13x64x64 (one file)", TileDataset(eurosat, "sentinel2_l1c", task="scene")),
            ("BigEarthNet S2 12x120x120 (12 band files, resampled)", TileDataset(ben, "sentinel2_l2a", task="corine")),
            ("BigEarthNet S1 2x120x120 (2 band files)", TileDataset(ben, "sentinel1_grd", task="corine")),
        ]
        results = [{"dataset": name, "tiles": len(ds), "tiles_per_s": round(tiles_per_second(ds, args.passes), 1)}
                   for name, ds in rows]
    record = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "passes": args.passes,
              "runs": 3, "statistic": "median", "results": results}
    atomic_write_text(RESULTS / "read_speed.json", json.dumps(record, indent=1))
    table = ["| dataset | tiles | tiles/s (median of 3) |", "|---|---|---|"]
    table += [f"| {r['dataset']} | {r['tiles']} | {r['tiles_per_s']} |" for r in results]
    atomic_write_text(RESULTS / "read_speed.md", "# Read speed through TileDataset (single process)\n\n"
                      + "\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
