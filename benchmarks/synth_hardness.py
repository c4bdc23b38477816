"""How hard is the synthetic "scene" task? Linear probes on Sentinel-2 tiles of a world preset.

Probes (multinomial logistic regression, L-BFGS, fitted on the world's train split with the L2
penalty that scores best on its val split, reported on its test split): raw per-band tile means
(the baseline a specialist must clearly beat), per-band means and standard deviations, a per-pixel
linear classifier whose predicted class histogram gives the tile label (spectra alone, no spatial
context), and the mask's class fractions (an oracle: the label is their argmax, so this shows the
labels are learnable; near ties between the two largest classes keep it a little under 1). Also
the distribution of the dominant class's share. Writes benchmarks/results/synth_hardness.{json,md}.

    python benchmarks/synth_hardness.py [--preset default] [--tiles 400] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from geodata.manifest import atomic_write_text
from geodata.sensors import get_sensor
from geodata.synth import CLASSES, iter_scenes, load_world_config

log = logging.getLogger("synth_hardness")
RESULTS = Path(__file__).resolve().parent / "results"
SENSOR = "sentinel2_l2a"


PENALTIES = (0.0, 1e-4, 1e-3, 1e-2)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--tiles", type=int, default=None, help="scenes per institution (default: the preset's)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
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
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "synth_hardness.json", json.dumps(result, indent=1))
    rows = [
        ("majority class", result["majority_class_accuracy"]),
        ("linear probe on per-band tile means (baseline)", result["probe_band_means"]["test"]),
        ("linear probe on per-band means + stds", result["probe_band_means_stds"]["test"]),
        ("per-pixel linear classifier, histogram argmax", result["probe_pixel_linear_histogram"]),
        ("linear probe on mask class fractions (oracle)", result["probe_mask_fractions_oracle"]["test"]),
    ]
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
    ))
    log.info(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
