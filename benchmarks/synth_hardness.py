"""How hard is the synthetic "scene" task? Linear probes vs a trained specialist on the same tiles.

All numbers come from the Sentinel-2 tiles of one world preset, train/val/test as the world splits them.

Probes (multinomial logistic regression, L-BFGS, fitted on the world's train split with the L2
penalty that scores best on its val split, reported on its test split): raw per-band tile means
(the baseline a specialist must clearly beat), per-band means and standard deviations, a per-pixel
linear classifier whose predicted class histogram gives the tile label (spectra alone, no spatial
context), and the mask's class fractions (an oracle: the label is their argmax, so this shows the
labels are learnable; near ties between the two largest classes keep it a little under 1). Also
the distribution of the dominant class's share. Then the ConvNeXtV2 specialist the project trains
(``specialists.train.train_specialist``, early stopping on val) on the same train tiles, once per
training seed, scored on the same test tiles, on one CPU thread.
Writes benchmarks/results/synth_hardness.{json,md}.

    python benchmarks/synth_hardness.py [--preset default] [--tiles 400] [--seed 0] [--train-seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from geodata.manifest import atomic_write_text
from geodata.sensors import get_sensor
from geodata.synth import CLASSES, iter_scenes, load_world_config
from specialists.card import DEFAULT_VARIANT, SpecialistCard
from specialists.train import TrainConfig, evaluate, make_loader, train_specialist

log = logging.getLogger("synth_hardness")
RESULTS = Path(__file__).resolve().parent / "results"
SENSOR = "sentinel2_l2a"


PENALTIES = (0.0, 1e-4, 1e-3, 1e-2)
SPECIALIST = TrainConfig(epochs=25)
"""The specialist recipe measured here (``specialists.train`` defaults otherwise)."""


def fit_linear(x: np.ndarray, y: np.ndarray, classes: int, weight_decay: float = 1e-3, steps: int = 500) -> torch.nn.Linear:
    """Multinomial logistic regression on standardised features (L-BFGS, L2 penalty)."""
    torch.manual_seed(0)
    xt, yt = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)
    model = torch.nn.Linear(x.shape[1], classes)
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xt), yt) + weight_decay * model.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return model


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(0), train.std(0) + 1e-8
    return [(a - mean) / std for a in (train, *others)]


def accuracy(model: torch.nn.Linear, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = model(torch.as_tensor(x, dtype=torch.float32)).argmax(1).numpy()
    return float((pred == y).mean())


def probe(x: np.ndarray, y: np.ndarray, splits: np.ndarray, penalties: tuple[float, ...] = PENALTIES) -> dict:
    """Test accuracy of the linear probe whose L2 penalty scores best on val."""
    train, val, test = (splits == s for s in ("train", "val", "test"))
    tr, va, te = standardise(x[train], x[val], x[test])
    scored = [(accuracy(fit_linear(tr, y[train], len(CLASSES), p), va, y[val]), p) for p in penalties]
    best = max(scored, key=lambda t: t[0])[1]
    return {"test": accuracy(fit_linear(tr, y[train], len(CLASSES), best), te, y[test]), "l2": best,
            "val": dict((str(p), a) for a, p in scored)}


def pixel_probe(images: np.ndarray, masks: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray,
                per_tile: int = 64) -> tuple[float, float]:
    """Per-pixel linear classifier (test pixel accuracy) and its histogram-argmax tile accuracy."""
    rng = np.random.default_rng(0)
    c = images.shape[1]
    pixels = images.transpose(0, 2, 3, 1).reshape(len(images), -1, c)
    flat_masks = masks.reshape(len(masks), -1)
    pick = rng.integers(0, pixels.shape[1], size=(int(train.sum()), per_tile))
    x = np.take_along_axis(pixels[train], pick[..., None], axis=1).reshape(-1, c)
    y = np.take_along_axis(flat_masks[train], pick, axis=1).ravel()
    mean, std = x.mean(0), x.std(0) + 1e-8
    model = fit_linear((x - mean) / std, y, len(CLASSES), weight_decay=1e-4)
    with torch.no_grad():
        logits = model(torch.as_tensor((pixels[test] - mean) / std, dtype=torch.float32))
    pred = logits.argmax(-1).numpy()
    pixel_acc = float((pred == flat_masks[test]).mean())
    hist = np.stack([np.bincount(p, minlength=len(CLASSES)) for p in pred])
    return pixel_acc, float((hist.argmax(1) == labels[test]).mean())


class SceneTiles(Dataset):
    """In-memory tiles of one split as the sample dicts ``train_specialist`` reads."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, bands: tuple[str, ...], ids: np.ndarray) -> None:
        self.images, self.labels, self.bands, self.ids = torch.from_numpy(images), labels, bands, ids

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        image = self.images[i]
        return {"image": image, "bands": self.bands, "target": int(self.labels[i]), "id": str(self.ids[i]),
                "valid": torch.ones(image.shape[-2:], dtype=torch.bool)}


def specialist_accuracy(images: np.ndarray, labels: np.ndarray, splits: np.ndarray, bands: tuple[str, ...],
                        cfg: TrainConfig, variant: str = DEFAULT_VARIANT) -> dict:
    """Train one specialist on the train split (early stopping on val); its test accuracy and run facts."""
    ids = np.arange(len(labels))
    data = {s: SceneTiles(images[splits == s], labels[splits == s], bands, ids[splits == s])
            for s in ("train", "val", "test")}
    train_images = images[splits == "train"]
    card = SpecialistCard(
        name="synth-hardness", institutions=["synthetic"], sensor=SENSOR, bands=list(bands),
        norm_mean=train_images.mean(axis=(0, 2, 3)).astype(float).tolist(),
        norm_std=train_images.std(axis=(0, 2, 3)).astype(float).tolist(), task="scene",
        task_type="classification", classes=list(CLASSES), variant=variant)
    start = time.perf_counter()
    specialist, head, history = train_specialist(data["train"], data["val"], card, cfg)
    test = evaluate(specialist, head, make_loader(data["test"], cfg, shuffle=False), "classification",
                    len(CLASSES), cfg, desc="test")
    return {"seed": cfg.seed, "test": test["accuracy"], "test_macro_f1": test["macro_f1"],
            "val": card.metrics["val_accuracy"], "best_epoch": card.metrics["best_epoch"],
            "epochs_run": len(history), "train_s": time.perf_counter() - start}


def _specialist_note(spec: dict, baseline: float) -> str:
    cfg = spec["train_config"]
    return (
        f"\nSpecialist: {spec['variant']}, AdamW lr {cfg['lr']:g}, "
        f"batch {cfg['batch_size']}, up to {cfg['epochs']} epochs (patience {cfg['patience']}), random flips/rot90, "
        f"{spec['threads']} CPU thread; per seed (test accuracy, best epoch): "
        + ", ".join(f"{r['seed']}: {r['test']:.3f} (epoch {r['best_epoch']})" for r in spec["runs"])
        + f". Median margin over the band-mean probe: {spec['margin_over_band_means']:+.3f} "
        f"({spec['test_median']:.3f} vs {baseline:.3f}). Training took {spec['total_s'] / 60:.1f} min in all.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--tiles", type=int, default=None, help="scenes per institution (default: the preset's)")
    parser.add_argument("--seed", type=int, default=None, help="world seed (default: the preset's)")
    parser.add_argument("--train-seeds", type=int, nargs="*", default=[0, 1, 2],
                        help="one specialist per training seed (none: probes only)")
    parser.add_argument("--epochs", type=int, default=SPECIALIST.epochs)
    parser.add_argument("--patience", type=int, default=SPECIALIST.patience)
    parser.add_argument("--lr", type=float, default=SPECIALIST.lr)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    config = load_world_config(args.preset, seed=args.seed, tiles_per_institution=args.tiles)
    sensor = get_sensor(SENSOR)

    start = time.perf_counter()
    images, masks, labels, fractions, splits, institutions = [], [], [], [], [], []
    for scene in iter_scenes(config, sensors=(SENSOR,), progress=True):
        tile = scene.tiles[SENSOR]
        images.append(tile.raw.astype(np.float32) * sensor.scale + sensor.offset)
        masks.append(tile.mask)
        labels.append(scene.label)
        fractions.append(scene.fractions)
        splits.append(scene.split)
        institutions.append(scene.institution)
    elapsed = time.perf_counter() - start
    images, masks, labels, fractions = np.stack(images), np.stack(masks), np.array(labels), np.stack(fractions)
    splits = np.array(splits)
    train, test = splits == "train", splits == "test"

    means = images.mean(axis=(2, 3))
    stds = images.std(axis=(2, 3))
    dominant = fractions.max(1)
    pixel_acc, pixel_tile_acc = pixel_probe(images, masks, labels, train, test)
    means_stds = np.hstack([means, stds])
    counts = np.bincount(labels, minlength=len(CLASSES))
    result = {
        "preset": args.preset,
        "seed": config.seed,
        "sensor": SENSOR,
        "institutions": sorted(set(institutions)),
        "tiles": {s: int((splits == s).sum()) for s in ("train", "val", "test")},
        "tile_size": config.tile_size,
        "classes": list(CLASSES),
        "scene_label_counts": dict(zip(CLASSES, counts.tolist())),
        "majority_class_accuracy": float((labels[test] == np.argmax(np.bincount(labels[train], minlength=len(CLASSES)))).mean()),
        "probe_band_means": probe(means, labels, splits),
        "probe_band_means_stds": probe(means_stds, labels, splits),
        "probe_pixel_linear_pixel_accuracy": pixel_acc,
        "probe_pixel_linear_histogram": pixel_tile_acc,
        "probe_mask_fractions_oracle": probe(fractions, labels, splits, penalties=(0.0,)),
        "dominant_share": {"median": float(np.median(dominant)), "p10": float(np.quantile(dominant, 0.1)),
                           "p90": float(np.quantile(dominant, 0.9)),
                           "within_0.35_0.60": float(((dominant >= 0.35) & (dominant <= 0.6)).mean())},
        "generation_s": elapsed,
    }
    bands = tuple(sensor.bands)
    runs = []
    for seed in args.train_seeds:
        cfg = replace(SPECIALIST, seed=seed, epochs=args.epochs, patience=args.patience, lr=args.lr)
        runs.append(specialist_accuracy(images, labels, splits, bands, cfg))
        log.info("specialist seed %d: %s", seed, runs[-1])
    if runs:
        tests = np.array([r["test"] for r in runs])
        result["specialist"] = {
            "variant": DEFAULT_VARIANT, "threads": torch.get_num_threads(),
            "train_config": asdict(replace(SPECIALIST, epochs=args.epochs, patience=args.patience, lr=args.lr)),
            "runs": runs, "test_median": float(np.median(tests)), "test_min": float(tests.min()),
            "test_max": float(tests.max()),
            "margin_over_band_means": float(np.median(tests)) - result["probe_band_means"]["test"],
            "total_s": sum(r["train_s"] for r in runs),
        }
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "synth_hardness.json", json.dumps(result, indent=1))
    rows = [
        ("majority class", result["majority_class_accuracy"]),
        ("linear probe on per-band tile means (baseline)", result["probe_band_means"]["test"]),
        ("linear probe on per-band means + stds", result["probe_band_means_stds"]["test"]),
        ("per-pixel linear classifier, histogram argmax", result["probe_pixel_linear_histogram"]),
        ("linear probe on mask class fractions (oracle)", result["probe_mask_fractions_oracle"]["test"]),
    ]
    if runs:
        spec = result["specialist"]
        rows.append((f"trained {DEFAULT_VARIANT} specialist (median of "
                     f"{len(runs)} seeds, min-max {spec['test_min']:.3f}-{spec['test_max']:.3f})", spec["test_median"]))
    table = "\n".join(f"| {name} | {acc:.3f} |" for name, acc in rows)
    share = result["dominant_share"]
    atomic_write_text(RESULTS / "synth_hardness.md", (
        f"# Synthetic scene task hardness ({args.preset} world, seed {config.seed}, {SENSOR} {config.tile_size}x"
        f"{config.tile_size}, {result['tiles']['train']} train / {result['tiles']['val']} val / "
        f"{result['tiles']['test']} test tiles, "
        f"{len(CLASSES)} classes)\n\nLinear probes: L2 penalty chosen on val, accuracy on test.\n\n| probe | test accuracy |\n|---|---|\n{table}\n\n"
        f"Dominant class share: median {share['median']:.2f} (p10 {share['p10']:.2f}, p90 {share['p90']:.2f}); "
        f"{share['within_0.35_0.60']:.0%} of tiles between 0.35 and 0.60.\n"
        f"Per-pixel linear classifier pixel accuracy: {pixel_acc:.3f}.\n"
        + (_specialist_note(result["specialist"], result["probe_band_means"]["test"]) if runs else "")
    ))
    log.info(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
