"""FedAvg vs central training of a group's specialist: same model, same budget, same held-out tiles.

The FedAvg side is the train phase without Flower: :class:`pipeline.fedavg.GroupTraining` gives the
group's card and seeded initial weights, each round every member runs ``clients.training.fit`` with
the round's settings (:func:`pipeline.fedavg.round_config`: cosine-decayed lr, the run's warm-up,
per-round seed) and the group averages the updates weighted by the members' train tiles.

The central side runs the very same loop with one member that holds the pooled train tiles of all
the group's institutions (a manifest listing both institutions' tiles). Budget equivalence: for
every round r = 1..R both sides make ``local_epochs`` (E) passes over every train tile of the group
with a fresh AdamW at the same lr (``lr * (1 + cos(pi (r-1) / R)) / 2``, constant within the round),
batch size, weight decay, augmentation and seed ``seed * 1000 + r``. So both see R x E x (N1 + N2)
training samples; central makes R x E x ceil((N1 + N2) / B) optimiser steps, FedAvg R x E x
(ceil(N1 / B) + ceil(N2 / B)) in total, R x E x ceil(max(N1, N2) / B) of them in sequence.
Only the averaging differs: FedAvg averages after each round what the members learnt apart, central
learns from shuffled batches mixing both institutions.

Both final models are scored with ``clients.training.evaluate_splits`` on every member's ``test``
split (and ``val``); the group score is the tile-weighted mean (``pipeline.fedavg.weighted_metrics``).
Issue 3's target: FedAvg accuracy >= 95% of central, median over training seeds (the world's data
stay fixed; ``seed`` changes initial weights, shuffling and augmentation).

Usage: python benchmarks/fedavg_vs_central.py [--experiment default] [--overrides "world.tile_size=32"]
       [--rounds 5 10] [--seeds 0 1 2] [--group sentinel2_l2a-scene] [--out benchmarks/results]
Writes <out>/fedavg_vs_central.json (one entry of ``runs`` per round count) and fedavg_vs_central.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

from clients.data import institution_tiles, open_manifest, summarize
from clients.institution import InstitutionSpec
from clients.training import build_model, evaluate_splits, fit
from geodata.files import atomic_write_text
from geodata.manifest import Manifest, TileEntry
from pipeline.fedavg import GroupTraining, State, Update, round_config, weighted_metrics
from pipeline.settings import ExperimentConfig, RunSettings, load_experiment
from server.phases.discover import simulated_record
from pipeline.roster import Group, Member, Roster, form_groups
from specialists.train import MONITOR, resolve_device

__all__ = ["main", "run_benchmark"]

log = logging.getLogger(__name__)
RESULTS = Path(__file__).resolve().parent / "results"
TARGET_RATIO = 0.95


def _roster(cfg: ExperimentConfig, cache_dir: Path) -> tuple[Roster, dict[str, InstitutionSpec]]:
    """The experiment's simulated institutions as the discover phase would bind them (no Flower)."""
    roster, specs, members = Roster(), {}, []
    for node_id, name in enumerate(cfg.institutions):
        record = simulated_record(cfg, name, cache_dir)
        spec = InstitutionSpec.from_record(record, f"institution {name!r}")
        summary = summarize(open_manifest(spec), spec)
        members.append(Member(name, spec.sensor, spec.task, node_id, True, record, summary,
                              list(summary.bands)))
        specs[name] = spec
    roster.institutions = {m.name: m for m in members}
    roster.groups = form_groups(members)
    return roster, specs


def _pick_group(roster: Roster, name: str) -> Group:
    if name:
        if name not in roster.groups:
            raise ValueError(f"no group {name!r}; the experiment forms {sorted(roster.groups)}")
        return roster.groups[name]
    shared = [g for g in roster.groups.values() if len(g.members) >= 2]
    if not shared:
        raise ValueError(f"no group of two or more institutions; groups: "
                         f"{ {k: g.members for k, g in roster.groups.items()} }")
    return shared[0]


def pooled_spec(specs: Sequence[InstitutionSpec], folder: Path) -> InstitutionSpec:
    """One institution holding all ``specs``' tiles (paths made absolute) in ``folder/manifest.json``."""
    first = specs[0]
    manifests = [open_manifest(spec) for spec in specs]
    task = manifests[0].task(first.task)
    tiles = []
    for manifest, spec in zip(manifests, specs):
        if manifest.task(spec.task) != task or spec.sensor != first.sensor:
            raise ValueError(f"institution {spec.name!r}: sensor or task differs from {first.name!r}; cannot pool")
        for tile in institution_tiles(manifest, spec):
            target = tile.targets[spec.task]
            if task.type == "segmentation":
                target = str(manifest.resolve(target))
            tiles.append(TileEntry(
                id=tile.id, sensor=tile.sensor, split=tile.split, targets={spec.task: target},
                path=str(manifest.resolve(tile.path)) if tile.path else None,
                band_paths={b: str(manifest.resolve(p)) for b, p in tile.band_paths.items()} if tile.band_paths else None,
                scene=tile.scene, region=tile.region, institution=tile.institution))
    if len({t.id for t in tiles}) != len(tiles):
        raise ValueError(f"institutions {[s.name for s in specs]} share tile ids; cannot pool")
    path = Manifest(tasks={first.task: task}, tiles=tiles, name="pooled",
                    allow_outside_paths=True).save(folder / "manifest.json")
    return InstitutionSpec(name="pooled", sensor=first.sensor, task=first.task, data_path=str(path))


def _copy(state: State) -> State:
    return {k: v.clone() for k, v in state.items()}


def _train(cfg: ExperimentConfig, group: Group, roster: Roster, members: Sequence[InstitutionSpec],
           label: str) -> tuple[GroupTraining, list[dict[str, Any]]]:
    """The train phase's rounds for ``group``'s specialist with ``members`` as the institutions."""
    run = GroupTraining.start(group, [roster.institutions[m] for m in group.members], cfg.train, cfg.seed,
                              tolerance_nm=cfg.tolerance_nm)
    run.train_counts = {spec.name: len(institution_tiles(open_manifest(spec), spec, "train")) for spec in members}
    for r in tqdm(range(1, cfg.train.rounds + 1), desc=label, unit="round"):
        tc = round_config(cfg.train, cfg.seed, r)
        # each member gets its own copy of the global weights, as a message would carry
        updates = [Update(spec.name, *fit(spec, run.card, _copy(run.encoder), _copy(run.head), tc))
                   for spec in members]
        run.apply(r, tc.lr, updates)
    return run, run.history


def _scores(run: GroupTraining, specs: Sequence[InstitutionSpec], cfg: ExperimentConfig) -> dict[str, Any]:
    """Per-institution and tile-weighted ``val``/``test`` metrics of the trained specialist."""
    tc = round_config(cfg.train, cfg.seed, cfg.train.rounds)
    specialist, head = build_model(run.card, run.encoder, run.head)
    device = resolve_device(tc.device)
    specialist.to(device), head.to(device)
    per = {spec.name: evaluate_splits(open_manifest(spec), spec, run.card, specialist, head, tc, ("val", "test"))
           for spec in specs}
    return {"group": weighted_metrics(per), "per_institution": per}


def run_benchmark(experiment: str, overrides: Sequence[str], seeds: Sequence[int], group_name: str = "") -> dict:
    """Both trainings for every seed; the JSON-ready record."""
    base, _ = load_experiment(RunSettings(experiment, tuple(overrides), "bench"))
    cache_dir = Path(base.cache_dir).expanduser().resolve()
    roster, specs = _roster(base, cache_dir)
    group = _pick_group(roster, group_name)
    members = [specs[name] for name in group.members]
    metric = f"test_{MONITOR[group.task_type]}"
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedavg-vs-central-") as tmp:
        pooled = pooled_spec(members, Path(tmp))
        for seed in seeds:
            cfg, _ = load_experiment(RunSettings(experiment, (*overrides, f"seed={seed}"), "bench"))
            row: dict[str, Any] = {"seed": seed}
            for method, institutions in (("fedavg", members), ("central", [pooled])):
                t0 = time.perf_counter()
                run, history = _train(cfg, group, roster, institutions, f"seed {seed} {method}")
                seconds = time.perf_counter() - t0
                row[method] = {**_scores(run, members, cfg), "train_seconds": round(seconds, 1),
                               "history": history}
                log.info("seed %d %s: %s %.4f (%.0f s)", seed, method, metric,
                         row[method]["group"][metric], seconds)
            central = row["central"]["group"][metric]
            row["ratio"] = row["fedavg"]["group"][metric] / central if central > 0 else None
            rows.append(row)
    ratios = [r["ratio"] for r in rows if r["ratio"] is not None]
    median_ratio = statistics.median(ratios) if ratios else None
    tiles = {name: roster.institutions[name].summary.tiles for name in group.members}
    train_tiles = [t["train"] for t in tiles.values()]
    tc = base.train
    return {
        "experiment": experiment, "overrides": list(overrides), "group": group.name, "members": group.members,
        "sensor": group.sensor, "task": group.task, "metric": metric, "tiles": tiles,
        "world": {k: base.world[k] for k in ("name", "tile_size", "tiles_per_institution", "aerial_factor")},
        "train": {"rounds": tc.rounds, "local_epochs": tc.local_epochs, "batch_size": tc.batch_size, "lr": tc.lr,
                  "weight_decay": tc.weight_decay, "variant": tc.variant, "max_steps": tc.max_steps},
        "budget": {
            "samples_per_side": tc.rounds * tc.local_epochs * sum(train_tiles),
            "central_optimizer_steps": tc.rounds * tc.local_epochs * math.ceil(sum(train_tiles) / tc.batch_size),
            "fedavg_optimizer_steps_total": tc.rounds * tc.local_epochs * sum(
                math.ceil(n / tc.batch_size) for n in train_tiles),
            "fedavg_optimizer_steps_sequential": tc.rounds * tc.local_epochs * math.ceil(max(train_tiles) / tc.batch_size),
            "equal_samples": tc.max_steps == 0,  # a per-node step cap gives the pooled node more samples
        },
        "seeds": rows,
        "median_ratio": median_ratio,
        "median_fedavg": statistics.median(r["fedavg"]["group"][metric] for r in rows),
        "median_central": statistics.median(r["central"]["group"][metric] for r in rows),
        "target_ratio": TARGET_RATIO,
        "meets_target": median_ratio is not None and median_ratio >= TARGET_RATIO,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }


def _fmt(value: float | None) -> str:
    return "n/a (central scored 0)" if value is None else f"{value:.3f}"


def _table(record: dict) -> str:
    metric, w = record["metric"], record["world"]
    tc, budget = record["train"], record["budget"]
    members = record["members"]
    lines = [
        f"## {record['group']} ({' + '.join(members)}), experiment {record['experiment']}"
        + (f" with {' '.join(record['overrides'])}" if record["overrides"] else ""),
        "",
        f"World {w['name']}: {w['tile_size']}x{w['tile_size']} tiles, {w['tiles_per_institution']} scenes per "
        f"institution; tiles {record['tiles']}. {tc['variant']}, {tc['rounds']} rounds x {tc['local_epochs']} local "
        f"epoch(s), batch {tc['batch_size']}, lr {tc['lr']} cosine over rounds, fresh AdamW each round, "
        f"{record['threads']} thread(s).",
        "",
        f"Same budget: each side sees {budget['samples_per_side']} training samples; optimiser steps: central "
        f"{budget['central_optimizer_steps']}, FedAvg {budget['fedavg_optimizer_steps_total']} in total "
        f"({budget['fedavg_optimizer_steps_sequential']} in sequence)."
        + ("" if budget["equal_samples"] else " NOT equal here: train.max_steps caps each node's steps per round."),
        "",
        f"| seed | FedAvg {metric} | central {metric} | ratio | "
        + " | ".join(f"FedAvg / central on {m}" for m in members) + " | train s (FedAvg / central) |",
        "|---|---|---|---|" + "---|" * len(members) + "---|",
    ]
    for row in record["seeds"]:
        per = " | ".join(f"{row['fedavg']['per_institution'][m][metric]:.3f} / "
                         f"{row['central']['per_institution'][m][metric]:.3f}" for m in members)
        lines.append(f"| {row['seed']} | {row['fedavg']['group'][metric]:.3f} | {row['central']['group'][metric]:.3f} "
                     f"| {_fmt(row['ratio'])} | {per} | {row['fedavg']['train_seconds']:.0f} / "
                     f"{row['central']['train_seconds']:.0f} |")
    verdict = "meets" if record["meets_target"] else "misses"
    lines += ["", f"Median over seeds: FedAvg {record['median_fedavg']:.3f}, central {record['median_central']:.3f}, "
                  f"ratio {_fmt(record['median_ratio'])} ({verdict} the >= {record['target_ratio']:.2f} target). "
                  f"Wall time {record['wall_seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="default", help="configs/experiment/<name>.yaml")
    parser.add_argument("--overrides", default="", help="Hydra overrides, space separated")
    parser.add_argument("--rounds", type=int, nargs="*", default=[],
                        help="round counts to compare at, one budget each (default: the experiment's train.rounds)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (experiment 'seed')")
    parser.add_argument("--group", default="", help="group name (default: the first group of 2+ institutions)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and markdown results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(1)
    t0, load = time.perf_counter(), round(os.getloadavg()[0], 2)
    runs = []
    for rounds in args.rounds or [None]:
        started = time.perf_counter()
        overrides = [*shlex.split(args.overrides), *([f"train.rounds={rounds}"] if rounds else [])]
        run = run_benchmark(args.experiment, overrides, args.seeds, args.group)
        run["wall_seconds"] = round(time.perf_counter() - started, 1)
        log.info("%s: FedAvg/central %s ratio (median over seeds) %s", " ".join(overrides) or args.experiment,
                 run["metric"], _fmt(run["median_ratio"]))
        runs.append(run)
    record = {"argv": list(argv) if argv is not None else sys.argv[1:], "load_average_1min_start": load, "runs": runs,
              "wall_seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_text(args.out / "fedavg_vs_central.json", json.dumps(record, indent=1))
    text = "\n".join(["# FedAvg vs central training of a group's specialist (same model, same budget)", "",
                      *(_table(run) for run in runs)])
    atomic_write_text(args.out / "fedavg_vs_central.md", text)
    return record


if __name__ == "__main__":
    main()
