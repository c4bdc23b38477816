"""With FCMAE pretraining vs without (issue 19 item 3): frozen encoders probed on real labelled sets.

For each real set (AID aerial RGB at 64 px; EuroSAT-MS), ``eosfed pretrain`` learns an encoder from the
set's **train** tiles with their labels ignored (one pretraining per seed); then the same linear probe
(logistic regression on pooled last-stage features, weight decay tuned on the val split, never on test)
scores, on the test split, at 100 % and 10 % of the train labels:

- ``fcmae``: the pretrained encoder, frozen;
- ``random-init``: the same architecture with the seed's random weights (its untrained twin);
- ``band-stats``: per-band mean and std of the input (:class:`fusion.baselines.BandStatistics`).

Second table: the shipped base checkpoint (``specialists/weights``, a synthetic world's supervised trunk)
as the start of every specialist and of the student vs a random start, per real task, read from the
real-data benchmark's two runs of one protocol (``benchmarks/real.py``'s JSON, e.g. ``real.json`` and
``--init random``'s ``real_random.json``): ``--base-from-real BASE RANDOM`` adds it without pretraining again.

Usage: python benchmarks/pretrain.py [--epochs 8] [--seeds 0,1,2] [--sets aid,eurosat] [--base-from-real BASE RANDOM]
Results: benchmarks/results/pretrain.json (with a ``targets`` list) and pretrain.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from eosfed.cli import main as eosfed
from fusion.baselines import BandStatistics
from fusion.probes import FeatureSet, linear_probe
from geodata.dataset import TileDataset, collate_samples
from geodata.files import atomic_write_text
from geodata.manifest import Manifest
from geodata.stats import load_or_compute_stats
from pipeline.samples import build_samples
from pipeline.settings import ExperimentConfig
from specialists.encoder import build_encoder
from specialists.init import load_encoder_weights

log = logging.getLogger("benchmarks.pretrain")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
SETS = {"aid": ("rgb", "scene", 64), "eurosat": ("sentinel2_l1c", "scene", None)}
FRACTIONS = (1.0, 0.1)


@torch.no_grad()
def features(encoder, loader: DataLoader, mean: torch.Tensor, std: torch.Tensor) -> dict[str, FeatureSet]:
    """Pooled last-stage features of ``encoder`` and band statistics, for one split."""
    encoder.eval()
    deep, stats, targets, ids = [], [], [], []
    for batch in loader:
        x = batch["image"].float()
        deep.append(encoder((x - mean) / std)[-1].mean((2, 3)))
        stats.append(BandStatistics().pooled(x, batch["bands"]))
        targets.append(batch["target"])
        ids += batch["id"]
    y = torch.cat(targets)
    return {"encoder": FeatureSet(torch.cat(deep), y, ids), "band-stats": FeatureSet(torch.cat(stats), y, ids)}


def subset(train: FeatureSet, fraction: float, seed: int) -> FeatureSet:
    """A class-stratified ``fraction`` of ``train`` (at least one per class)."""
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in train.targets.unique():
        idx = (train.targets == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        keep.append(idx[: max(1, round(len(idx) * fraction))])
    return train.subset(torch.cat(keep))


def run_set(name: str, manifest_path: Path, out: Path, epochs: int, seeds: list[int]) -> dict:
    sensor, task, size = SETS[name]
    manifest = Manifest.load(manifest_path)
    spec = manifest.task(task)
    stats = load_or_compute_stats(manifest, sensor, "train")
    mean, std = torch.tensor(stats.mean).view(1, -1, 1, 1), torch.tensor(stats.std).view(1, -1, 1, 1)
    loaders = {s: DataLoader(TileDataset(manifest, sensor, split=s, task=task, size=size, stats=stats), batch_size=64,
                             collate_fn=collate_samples) for s in ("train", "val", "test")}
    scores: dict[str, dict[float, list[float]]] = {}
    losses = {}
    for seed in seeds:
        folder = out / f"{name}-fcmae-seed{seed}"
        if not (folder / "pretrain.json").is_file():
            args = ["pretrain", "--manifest", str(manifest_path), "--sensor", sensor, "--out", str(folder),
                    "--overwrite", "--epochs", str(epochs), "--seed", str(seed)]
            if eosfed(args + (["--size", str(size)] if size else [])) != 0:
                raise RuntimeError(f"eosfed pretrain failed on {name}")
        losses[seed] = json.loads((folder / "pretrain.json").read_text())["loss"]
        torch.manual_seed(seed)
        fcmae = build_encoder(in_chans=len(stats.bands))
        load_encoder_weights(fcmae, folder / "weights.safetensors", tolerance_nm=ExperimentConfig.tolerance_nm)
        encoders = {"fcmae": fcmae, "random-init": build_encoder(in_chans=len(stats.bands))}
        for enc_name, encoder in encoders.items():
            f = {s: features(encoder, loader, mean, std) for s, loader in loaders.items()}
            rows = {enc_name: "encoder"} | ({"band-stats": "band-stats"} if enc_name == "fcmae" else {})
            for row, key in rows.items():
                for fraction in FRACTIONS:
                    train = subset(f["train"][key], fraction, seed)
                    score = linear_probe(train, f["test"][key], spec, val=f["val"][key], seed=seed)
                    scores.setdefault(row, {}).setdefault(fraction, []).append(score)
                    log.info("%s seed %d %s at %g of the labels: %.4f", name, seed, row, fraction, score)
    return {"set": name, "sensor": sensor, "size": size, "metric": "accuracy",
            "tiles": {s: len(l.dataset) for s, l in loaders.items()}, "fcmae_loss": losses,
            "scores": {row: {str(f): {"mean": float(np.mean(v)), "std": float(np.std(v)), "values": v}
                             for f, v in per.items()} for row, per in scores.items()}}


BASE_COLUMNS = ("student", "ensemble", "best specialist")


def base_start(base: Path, random: Path) -> dict:
    """Per task and label fraction (deep protocol), each learned column of the real benchmark started from
    the base (``base``'s run) vs from random weights (``random``'s), beside both baselines; the targets
    compare the student means."""
    runs = {"base": json.loads(base.read_text()), "random": json.loads(random.read_text())}
    tables, targets = [], []
    for summary in (s for s in runs["base"]["summaries"] if s["protocol"] == "deep"):
        other = next(s for s in runs["random"]["summaries"]
                     if s["protocol"] == "deep" and s["fraction"] == summary["fraction"])
        rows = [{"task": b["task"], "metric": b["metric"], **{f"{k} {init}": row[k]["mean"] for init, row in
                                                               (("base", b), ("random", r)) for k in BASE_COLUMNS},
                 "random-init": b["random-init"]["mean"], "band-stats": b["band-stats"]["mean"]}
                for b, r in zip(summary["rows"], other["rows"])]
        tables.append({"fraction": summary["fraction"], "rows": rows})
        gain = summary["means"]["student"] - other["means"]["student"]
        targets.append({"target": f"student mean from the base - from random, {summary['fraction']:g} of the labels",
                        "value": gain, "threshold": "> 0", "met": gain > 0})
    return {"seeds": runs["base"]["seeds"], "runs": {"base": base.name, "random": random.name},
            "runtime_s": {k: r["runtime_s"] for k, r in runs.items()},
            "tables": tables, "targets": targets}


def _base_markdown(base: dict) -> list[str]:
    heads = [f"{k} {init}" for k in BASE_COLUMNS for init in ("base", "random")] + ["random-init", "band-stats"]
    lines = ["", "# The base checkpoint as the start vs a random start: the real-data benchmark", "",
             "`benchmarks/real.py` run twice, specialists and student started from the shipped base (a trunk "
             "trained with labels on a synthetic world of its own seed; no real image) or from random weights; "
             f"same splits, probes and seeds {base['seeds']} (`{base['runs']['base']}` vs `{base['runs']['random']}`); "
             "deep protocol, test split, mean over seeds.", ""]
    for table in base["tables"]:
        lines += [f"## {table['fraction']:g} of the labels", "", "| task | metric | " + " | ".join(heads) + " |",
                  "|---" * (2 + len(heads)) + "|"]
        lines += [f"| {r['task']} | {r['metric']} | " + " | ".join(f"{r[h]:.4f}" for h in heads) + " |"
                  for r in table["rows"]]
        lines.append("")
    lines += ["| target | value | threshold | met |", "|---|---|---|---|"]
    return lines + [f"| {t['target']} | {t['value']:+.4f} | {t['threshold']} | {'yes' if t['met'] else 'no'} |"
                    for t in base["targets"]]


def markdown(record: dict) -> str:
    lines = ["# FCMAE pretraining vs none: frozen-encoder linear probes on real data", "",
             f"`eosfed pretrain` ({record['epochs']} epochs, labels ignored) on each set's train tiles, one "
             f"pretraining per seed ({record['seeds']}); linear probe tuned on val, scored on test. Runtime "
             f"{record['runtime_s'] / 60:.1f} min on {record['setup']['machine']} CPU.", "",
             "| set | labels | fcmae | random-init | band-stats |", "|---|---|---|---|---|"]
    for r in record["sets"]:
        for f in FRACTIONS:
            cells = [f"{r['scores'][k][str(f)]['mean']:.4f} ± {r['scores'][k][str(f)]['std']:.4f}"
                     for k in ("fcmae", "random-init", "band-stats")]
            lines.append(f"| {r['set']} ({r['tiles']['train']} train) | {f:g} | " + " | ".join(cells) + " |")
    lines += ["", "| target | value | threshold | met |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']:+.4f} | {t['threshold']} | {'yes' if t['met'] else 'no'} |"
              for t in record["targets"] if not t["target"].startswith("student mean from the base")]
    if "base_start" in record:
        lines += _base_markdown(record["base_start"])
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/pretrain"))
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--sets", default="aid,eurosat")
    parser.add_argument("--base-from-real", nargs=2, type=Path, metavar=("BASE", "RANDOM"),
                        help="only (re)write the base-vs-random table from two real.py results of one protocol")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.base_from_real:
        record = json.loads((args.results / "pretrain.json").read_text())
        record["base_start"] = base_start(*args.base_from_real)
        record["targets"] = [t for t in record["targets"] if not t["target"].startswith("student mean from the base")]
        record["targets"] += record["base_start"]["targets"]
        atomic_write_text(args.results / "pretrain.json", json.dumps(record, indent=1))
        atomic_write_text(args.results / "pretrain.md", markdown(record))
        log.info("\n%s", markdown(record))
        return
    begin = time.perf_counter()
    names = args.sets.split(",")
    paths = build_samples(DATA, args.out / "samples", sets=names)
    seeds = [int(s) for s in args.seeds.split(",")]
    sets = [run_set(n, paths[n], args.out, args.epochs, seeds) for n in names]
    targets = []
    for r in sets:
        s = r["scores"]
        for k in ("random-init", "band-stats"):
            gain = s["fcmae"]["1.0"]["mean"] - s[k]["1.0"]["mean"]
            targets.append({"target": f"{r['set']}: fcmae - {k}, all labels", "value": gain, "threshold": "> 0",
                            "met": gain > 0})
    record = {"benchmark": "pretrain", "epochs": args.epochs, "seeds": seeds, "sets": sets, "targets": targets,
              "setup": {"python": platform.python_version(), "torch": torch.__version__,
                        "threads": torch.get_num_threads(), "machine": platform.machine()},
              "runtime_s": time.perf_counter() - begin}
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.results / "pretrain.json", json.dumps(record, indent=1))
    atomic_write_text(args.results / "pretrain.md", markdown(record))
    log.info("\n%s", markdown(record))


if __name__ == "__main__":
    main()
