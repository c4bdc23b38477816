"""Accuracy vs privacy of a group's specialist under ``train.dp``: no DP beside several noise multipliers.

The training is the train phase without Flower, exactly as in ``benchmarks/fedavg_vs_central.py`` (its
``_train``: :class:`pipeline.fedavg.GroupTraining` rounds with every member running ``clients.training.fit``),
with server-side fixed clipping (``train.dp.mode=server``: the coordinator clips each update to
``--clip`` and noises the round's mean, :mod:`pipeline.privacy`); client-side clipping is the same mechanism
with the clip at the members. Each setting trains from the same seed (same initial weights, shuffling and
augmentation); the noise is drawn from fresh randomness, so a rerun differs by it. The group is scored on
its members' ``val`` and ``test`` splits (tile-weighted mean), epsilon is opacus's RDP accountant at
``train.dp.delta`` after the rounds (sampling rate 1: every member every round).

Usage: python benchmarks/dp.py [--experiment default] [--overrides "train.rounds=5"] [--noise 0.01 0.1 1]
       [--clip 1.0] [--seed 0] [--group sentinel2_l2a-scene] [--out benchmarks/results]
Writes <out>/dp.json (with ``targets``) and dp.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from fedavg_vs_central import _pick_group, _roster, _scores, _train  # the train phase without Flower
from geodata.files import atomic_write_text
from pipeline.settings import RunSettings, load_experiment
from specialists.train import MONITOR

__all__ = ["main", "run_benchmark"]

log = logging.getLogger(__name__)
RESULTS = Path(__file__).resolve().parent / "results"
NOISE = (0.01, 0.1, 1.0)
TOLERANCE = 0.05  # accuracy a DP setting may lose against no DP and still count as "within"


def _setting(experiment: str, overrides: Sequence[str], group_name: str, noise: float | None, clip: float,
             cache: dict[str, Any]) -> dict[str, Any]:
    """Train and score the group with ``noise`` (``None``: no DP); ``cache`` holds the roster across settings."""
    dp = [] if noise is None else ["train.dp.mode=server", f"train.dp.clipping_norm={clip}",
                                   f"train.dp.noise_multiplier={noise}"]
    cfg, _ = load_experiment(RunSettings(experiment, (*overrides, *dp), "bench"))
    if not cache:
        cache["roster"], cache["specs"] = _roster(cfg, Path(cfg.cache_dir).expanduser().resolve())
    group = _pick_group(cache["roster"], group_name)
    members = [cache["specs"][name] for name in group.members]
    t0 = time.perf_counter()
    run, history = _train(cfg, group, cache["roster"], members, "no DP" if noise is None else f"noise {noise:g}")
    seconds = time.perf_counter() - t0
    scores = _scores(run, members, cfg)
    norms = [n for h in history for n in h.get("dp", {}).get("update_norms", {}).values()]
    return {"noise_multiplier": noise, "privacy": run.privacy(), "group": scores["group"],
            "per_institution": scores["per_institution"], "train_seconds": round(seconds, 1),
            "median_update_norm": statistics.median(norms) if norms else None,
            "noise_stdv": [h["dp"]["noise_stdv"] for h in history if "dp" in h] or None,
            "group_info": {"group": group.name, "members": group.members, "classes": len(group.classes),
                     "task_type": group.task_type, "tiles": {m: cache["roster"].institutions[m].summary.tiles
                                                             for m in group.members}},
            "train": {k: getattr(cfg.train, k) for k in ("rounds", "local_epochs", "batch_size", "lr", "variant",
                                                          "init", "max_steps")},
            "world": {k: cfg.world[k] for k in ("name", "tile_size", "tiles_per_institution")} if cfg.world else None}


def _targets(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """The issue's targets, measured (``rows[0]``: no DP)."""
    base, noised = rows[0], rows[1:]
    eps = [r["privacy"]["epsilon"] for r in noised]
    smallest, largest = noised[0], noised[-1]  # sorted by noise

    def gap(row: dict) -> float:
        return round(row["group"][metric] - base["group"][metric], 4)

    return [
        {"target": "accuracy at noise levels beside no DP", "value": len(noised), "threshold": ">= 3",
         "met": len(noised) >= 3, "note": f"group {metric}, same seed, one training per level"},
        {"target": "epsilon reported per noise level and falling as the noise grows",
         "value": [round(e, 3) for e in eps], "threshold": "finite, strictly decreasing",
         "met": all(a > b for a, b in zip(eps, eps[1:])) and all(e < float("inf") for e in eps),
         "note": "opacus RDP accountant, sampling rate 1"},
        {"target": f"{metric} at the smallest noise ({smallest['noise_multiplier']:g}) - no DP",
         "value": gap(smallest), "threshold": f">= -{TOLERANCE}", "met": gap(smallest) >= -TOLERANCE,
         "note": f"epsilon {smallest['privacy']['epsilon']:.4g}"},
        {"target": f"{metric} at the largest noise ({largest['noise_multiplier']:g}) - no DP",
         "value": gap(largest), "threshold": f">= -{TOLERANCE}", "met": gap(largest) >= -TOLERANCE,
         "note": f"epsilon {largest['privacy']['epsilon']:.4g}"},
    ]


def run_benchmark(experiment: str, overrides: Sequence[str], noise: Sequence[float], clip: float, seed: int,
                  group_name: str = "") -> dict[str, Any]:
    """No DP, then each noise multiplier, at one seed; the JSON-ready record."""
    overrides = [*overrides, f"seed={seed}"]
    cache: dict[str, Any] = {}
    rows = [_setting(experiment, overrides, group_name, z, clip, cache) for z in (None, *sorted(noise))]
    info = rows[0]["group_info"]
    metric = f"test_{MONITOR[info['task_type']]}"
    return {"experiment": experiment, "overrides": overrides, "synthetic": bool(rows[0]["world"]), **info,
            "world": rows[0]["world"], "train": rows[0]["train"], "metric": metric, "clipping_norm": clip,
            "delta": rows[1]["privacy"]["delta"] if len(rows) > 1 else None, "mode": "server",
            "rows": [{k: v for k, v in r.items() if k not in ("group_info", "train", "world")} for r in rows],
            "targets": _targets(rows, metric) if len(rows) > 1 else [],
            "threads": torch.get_num_threads(), "torch": torch.__version__}


def _table(record: dict[str, Any]) -> str:
    metric, tc, w = record["metric"], record["train"], record["world"]
    val = "val_" + metric.split("_", 1)[1]
    source = (f"{'Synthetic' if record['synthetic'] else 'Real'} data: world {w['name']}, {w['tile_size']}x"
              f"{w['tile_size']} tiles" if w else "Data: manifests") + f", tiles {record['tiles']}."
    lines = [f"# Accuracy vs privacy: {record['group']} ({' + '.join(record['members'])}), train.dp server-side "
             f"clipping", "",
             f"{source} {tc['variant']} from `{tc['init']}`, {tc['rounds']} rounds x {tc['local_epochs']} local "
             f"epoch(s), batch {tc['batch_size']}, seed {record['overrides'][-1].split('=')[1]}, clip "
             f"{record['clipping_norm']:g}, delta {record['delta']:g}, {record['threads']} thread(s); "
             f"{record['classes']} classes (chance about {1 / record['classes']:.3f}). One training per row; the "
             f"noise is fresh randomness.", "",
             f"| noise multiplier | epsilon | {val} | {metric} | noise std per weight | median update norm before "
             f"clipping | train s |", "|---|---|---|---|---|---|---|"]
    for r in record["rows"]:
        eps = "no DP" if r["privacy"] is None else f"{r['privacy']['epsilon']:.4g}"
        stdv = "-" if r["noise_stdv"] is None else f"{r['noise_stdv'][0]:.3g}"
        norm = "-" if r["median_update_norm"] is None else f"{r['median_update_norm']:.3g}"
        z = "-" if r["noise_multiplier"] is None else f"{r['noise_multiplier']:g}"
        lines.append(f"| {z} | {eps} | {r['group'][val]:.3f} | {r['group'][metric]:.3f} | {stdv} | {norm} | "
                     f"{r['train_seconds']:.0f} |")
    lines += ["", "| target | value | threshold | met |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']} | {t['threshold']} | {'yes' if t['met'] else 'no'} |"
              for t in record["targets"]]
    return "\n".join(lines) + f"\n\nWall time {record['wall_seconds']:.0f} s.\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="default", help="configs/experiment/<name>.yaml")
    parser.add_argument("--overrides", default="", help="Hydra overrides, space separated")
    parser.add_argument("--noise", type=float, nargs="+", default=list(NOISE), help="noise multipliers")
    parser.add_argument("--clip", type=float, default=1.0, help="train.dp.clipping_norm")
    parser.add_argument("--seed", type=int, default=0, help="training seed (experiment 'seed')")
    parser.add_argument("--group", default="", help="group name (default: the first group of 2+ institutions)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and markdown results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(1)
    t0, load = time.perf_counter(), round(os.getloadavg()[0], 2)
    record = run_benchmark(args.experiment, shlex.split(args.overrides), args.noise, args.clip, args.seed, args.group)
    record.update(argv=list(argv) if argv is not None else sys.argv[1:], load_average_1min_start=load,
                  wall_seconds=round(time.perf_counter() - t0, 1))
    for t in record["targets"]:
        log.info("%s: %s (%s: %s)", t["target"], t["value"], t["threshold"], "met" if t["met"] else "not met")
    atomic_write_text(args.out / "dp.json", json.dumps(record, indent=1))
    atomic_write_text(args.out / "dp.md", _table(record))
    return record


if __name__ == "__main__":
    main()
