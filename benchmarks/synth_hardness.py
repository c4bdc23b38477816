"""How hard is the synthetic "scene" task? Linear probes vs a trained specialist on the same tiles.

All numbers come from the Sentinel-2 tiles of one world preset, train/val/test as the world splits them.

Probes (multinomial logistic regression, L-BFGS, fitted on the world's train split with the L2
penalty that scores best on its val split, reported on its test split): raw per-band tile means
(the baseline a specialist must clearly beat), per-band means and standard deviations, a per-pixel
linear classifier whose predicted class histogram gives the tile label (spectra alone, no spatial
context), and the mask's class fractions (an oracle: the label is their argmax, so this shows the
labels are learnable; near ties between the two largest classes keep it a little under 1). Also
the distribution of the dominant class's share. Then two ConvNeXtV2 specialists the project trains
(``specialists.train.train_specialist``) on the same train tiles, once per training seed, scored on
the same test tiles, on one CPU thread: a scene specialist on the scene labels (early stopping on val
accuracy), and a segmentation specialist on the tiles' land-cover masks (the world's "landcover" task;
a fixed number of epochs, the epoch with the best val mIoU restored, or early stopping with
``--seg-patience``) whose scene prediction is the argmax of its predicted class histogram over the
tile's valid pixels, the way the scene label is the argmax of the mask's class fractions.
``--reuse-scene-specialist`` skips training the scene specialist and keeps its runs from the
existing results file (same world only); the markdown says which rows this run measured.
Results are rewritten after every trained specialist, so an interrupted run keeps what it finished.
Writes benchmarks/results/synth_hardness.{json,md}.

    python benchmarks/synth_hardness.py [--preset default] [--tiles 400] [--seed 0] [--train-seeds 0 1 2]
        [--seg-epochs 30] [--reuse-scene-specialist]
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

from geodata.files import atomic_write_text
from geodata.sensors import get_sensor
from geodata.synth import CLASSES, iter_scenes, load_world_config
from specialists.card import SpecialistCard
from specialists.train import TrainConfig, evaluate, make_loader, train_specialist
from specialists.trunk import DEFAULT_VARIANT

log = logging.getLogger("synth_hardness")
RESULTS = Path(__file__).resolve().parent / "results"
SENSOR = "sentinel2_l2a"


PENALTIES = (0.0, 1e-4, 1e-3, 1e-2)
SPECIALIST = TrainConfig(epochs=25)
"""The scene specialist recipe measured here (``specialists.train`` defaults otherwise)."""
SEGMENTER = TrainConfig(epochs=30, patience=0)
"""The segmentation specialist recipe: fixed epochs, best val mIoU epoch restored."""
IGNORE_INDEX = 255


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


class Tiles(Dataset):
    """In-memory tiles of one split as the sample dicts ``train_specialist`` reads.

    ``targets`` holds scene labels ``[N]`` or land-cover masks ``[N,H,W]`` (``IGNORE_INDEX``: invalid).
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, bands: tuple[str, ...], ids: np.ndarray) -> None:
        self.images, self.bands, self.ids = torch.from_numpy(images), bands, ids
        self.targets = torch.from_numpy(targets.astype(np.int64))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict:
        image, target = self.images[i], self.targets[i]
        valid = target != IGNORE_INDEX if target.ndim else torch.ones(image.shape[-2:], dtype=torch.bool)
        return {"image": image, "bands": self.bands, "target": target if target.ndim else int(target),
                "id": str(self.ids[i]), "valid": valid}


def _splits_of(images: np.ndarray, targets: np.ndarray, splits: np.ndarray, bands: tuple[str, ...]) -> dict[str, Tiles]:
    ids = np.arange(len(images))
    return {s: Tiles(images[splits == s], targets[splits == s], bands, ids[splits == s])
            for s in ("train", "val", "test")}


def _card(train_images: np.ndarray, bands: tuple[str, ...], task: str, task_type: str, variant: str) -> SpecialistCard:
    return SpecialistCard(
        name="synth-hardness", institutions=["synthetic"], sensor=SENSOR, bands=list(bands),
        norm_mean=train_images.mean(axis=(0, 2, 3)).astype(float).tolist(),
        norm_std=train_images.std(axis=(0, 2, 3)).astype(float).tolist(), task=task,
        task_type=task_type, classes=list(CLASSES), variant=variant)


def specialist_accuracy(images: np.ndarray, labels: np.ndarray, splits: np.ndarray, bands: tuple[str, ...],
                        cfg: TrainConfig, variant: str = DEFAULT_VARIANT) -> dict:
    """Train one scene specialist on the train split (early stopping on val); its test accuracy and run facts."""
    data = _splits_of(images, labels, splits, bands)
    card = _card(images[splits == "train"], bands, "scene", "classification", variant)
    start = time.perf_counter()
    specialist, head, history = train_specialist(data["train"], data["val"], card, cfg, tolerance_nm=None)
    test = evaluate(specialist, head, make_loader(data["test"], cfg, shuffle=False), "classification",
                    len(CLASSES), cfg, desc="test")
    return {"seed": cfg.seed, "test": test["accuracy"], "test_macro_f1": test["macro_f1"],
            "val": card.metrics["val_accuracy"], "best_epoch": card.metrics["best_epoch"],
            "epochs_run": len(history), "train_s": time.perf_counter() - start}


@torch.no_grad()
def histogram_scene_accuracy(specialist: torch.nn.Module, head: torch.nn.Module, tiles: Tiles,
                             labels: np.ndarray, cfg: TrainConfig) -> float:
    """Share of ``tiles`` whose predicted mask's most frequent class over valid pixels is their scene label."""
    hits = 0
    for batch in make_loader(tiles, cfg, shuffle=False):
        pred = head(specialist(batch["image"]), batch["image"].shape[-2:]).argmax(1)
        for p, valid, tile_id in zip(pred, batch["valid"], batch["id"]):
            hist = torch.bincount(p[valid], minlength=len(CLASSES))
            hits += int(hist.argmax()) == int(labels[int(tile_id)])
    return hits / len(tiles)


def segmenter_accuracy(images: np.ndarray, masks: np.ndarray, labels: np.ndarray, splits: np.ndarray,
                       bands: tuple[str, ...], cfg: TrainConfig, variant: str = DEFAULT_VARIANT) -> dict:
    """Train one land-cover segmentation specialist on the train split; its test scene accuracy and run facts."""
    data = _splits_of(images, masks, splits, bands)
    card = _card(images[splits == "train"], bands, "landcover", "segmentation", variant)
    start = time.perf_counter()
    specialist, head, history = train_specialist(data["train"], data["val"], card, cfg, ignore_index=IGNORE_INDEX,
                                                 tolerance_nm=None)
    train_s = time.perf_counter() - start
    test = evaluate(specialist, head, make_loader(data["test"], cfg, shuffle=False), "segmentation",
                    len(CLASSES), cfg, IGNORE_INDEX, desc="test")
    return {"seed": cfg.seed, "test": histogram_scene_accuracy(specialist, head, data["test"], labels, cfg),
            "test_miou": test["miou"], "test_pixel_accuracy": test["pixel_accuracy"],
            "val_miou": card.metrics["val_miou"], "best_epoch": card.metrics["best_epoch"],
            "epochs_run": len(history), "train_s": train_s}


def summarise(runs: list[dict], cfg: TrainConfig, baseline: float) -> dict:
    """Median, range and margin over the band-mean probe of per-seed test accuracies."""
    tests = np.array([r["test"] for r in runs])
    return {"variant": DEFAULT_VARIANT, "threads": torch.get_num_threads(), "train_config": asdict(cfg),
            "runs": runs, "test_median": float(np.median(tests)), "test_min": float(tests.min()),
            "test_max": float(tests.max()), "margin_over_band_means": float(np.median(tests)) - baseline,
            "total_s": sum(r["train_s"] for r in runs), "measured_in_this_run": True}


def stored_scene_specialist(result: dict) -> dict:
    """The scene specialist runs of the existing results file, checked to be for the same world."""
    path = RESULTS / "synth_hardness.json"
    if not path.is_file():
        raise FileNotFoundError(f"--reuse-scene-specialist: no stored results at {path}")
    stored = json.loads(path.read_text())
    for key in ("preset", "seed", "sensor", "tiles", "tile_size", "classes"):
        if stored.get(key) != result[key]:
            raise ValueError(f"--reuse-scene-specialist: {path} field {key!r} is {stored.get(key)!r}, "
                             f"this run has {result[key]!r}")
    if "specialist" not in stored:
        raise ValueError(f"--reuse-scene-specialist: {path} has no 'specialist' runs")
    spec = dict(stored["specialist"])
    spec["margin_over_band_means"] = spec["test_median"] - result["probe_band_means"]["test"]
    spec["measured_in_this_run"] = False
    return spec


def _seed_list(runs: list[dict], detail: str) -> str:
    return ", ".join(f"{r['seed']}: {r['test']:.3f} (" + detail.format(**r) + ")" for r in runs)


def _specialist_note(spec: dict, baseline: float) -> str:
    cfg = spec["train_config"]
    return (
        f"\nScene specialist ({'measured in this run' if spec['measured_in_this_run'] else 'stored from an earlier run'}): "
        f"{spec['variant']}, AdamW lr {cfg['lr']:g}, "
        f"batch {cfg['batch_size']}, up to {cfg['epochs']} epochs (patience {cfg['patience']}), random flips/rot90, "
        f"{spec['threads']} CPU thread; per seed (test accuracy, best epoch): "
        + _seed_list(spec["runs"], "epoch {best_epoch}")
        + f". Median margin over the band-mean probe: {spec['margin_over_band_means']:+.3f} "
        f"({spec['test_median']:.3f} vs {baseline:.3f}). Training took {spec['total_s'] / 60:.1f} min in all.\n"
    )


def _segmenter_note(spec: dict, baseline: float) -> str:
    cfg = spec["train_config"]
    stop = (f"early stopping with patience {cfg['patience']}" if cfg["patience"]
            else "no early stopping, the epoch with the best val mIoU restored")
    return (
        f"\nSegmentation specialist (measured in this run): {spec['variant']} with the FPN segmentation head, trained on "
        f"the train tiles' land-cover masks (task 'landcover'), AdamW lr {cfg['lr']:g}, batch {cfg['batch_size']}, "
        f"{cfg['epochs']} epochs ({stop}), random flips/rot90, {spec['threads']} CPU thread; scene prediction = argmax "
        f"of the predicted class histogram over valid pixels. Per seed (test scene accuracy; best epoch, test mIoU, "
        f"test pixel accuracy): "
        + _seed_list(spec["runs"], "epoch {best_epoch}, mIoU {test_miou:.3f}, pixel acc {test_pixel_accuracy:.3f}")
        + f". Median {spec['test_median']:.3f} (min-max {spec['test_min']:.3f}-{spec['test_max']:.3f}); "
        f"median margin over the band-mean probe: {spec['margin_over_band_means']:+.3f} "
        f"({spec['test_median']:.3f} vs {baseline:.3f}). Training took {spec['total_s'] / 60:.1f} min in all.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--tiles", type=int, default=None, help="scenes per institution (default: the preset's)")
    parser.add_argument("--seed", type=int, default=None, help="world seed (default: the preset's)")
    parser.add_argument("--train-seeds", type=int, nargs="*", default=[0, 1, 2],
                        help="one specialist per training seed (none: probes only)")
    parser.add_argument("--epochs", type=int, default=SPECIALIST.epochs, help="scene specialist epochs")
    parser.add_argument("--patience", type=int, default=SPECIALIST.patience, help="scene specialist patience")
    parser.add_argument("--lr", type=float, default=SPECIALIST.lr, help="scene specialist learning rate")
    parser.add_argument("--reuse-scene-specialist", action="store_true",
                        help="keep the scene specialist runs of the existing results file instead of training them")
    parser.add_argument("--seg-epochs", type=int, default=SEGMENTER.epochs,
                        help="segmentation specialist epochs (0: skip it)")
    parser.add_argument("--seg-patience", type=int, default=SEGMENTER.patience,
                        help="segmentation early stopping patience on val mIoU (0: none, best epoch restored)")
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
    baseline = result["probe_band_means"]["test"]
    if args.reuse_scene_specialist:  # read before this run rewrites the file
        result["specialist"] = stored_scene_specialist(result)
    write_results(result, args.preset)
    if not args.reuse_scene_specialist and args.train_seeds:
        scene_cfg = replace(SPECIALIST, epochs=args.epochs, patience=args.patience, lr=args.lr)
        runs = []
        for seed in args.train_seeds:
            runs.append(specialist_accuracy(images, labels, splits, bands, replace(scene_cfg, seed=seed)))
            log.info("scene specialist seed %d: %s", seed, runs[-1])
            result["specialist"] = summarise(runs, scene_cfg, baseline)
            write_results(result, args.preset)
    if args.seg_epochs and args.train_seeds:
        seg_cfg = replace(SEGMENTER, epochs=args.seg_epochs, patience=args.seg_patience)
        runs = []
        for seed in args.train_seeds:
            runs.append(segmenter_accuracy(images, masks, labels, splits, bands, replace(seg_cfg, seed=seed)))
            log.info("segmentation specialist seed %d: %s", seed, runs[-1])
            result["segmentation_specialist"] = summarise(runs, seg_cfg, baseline)
            write_results(result, args.preset)
    write_results(result, args.preset)
    log.info(json.dumps(result, indent=1))


def write_results(result: dict, preset: str) -> None:
    """Write the JSON and the markdown table of what ``result`` holds so far."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "synth_hardness.json", json.dumps(result, indent=1))
    rows = [
        ("majority class", result["majority_class_accuracy"], True),
        ("linear probe on per-band tile means (baseline)", result["probe_band_means"]["test"], True),
        ("linear probe on per-band means + stds", result["probe_band_means_stds"]["test"], True),
        ("per-pixel linear classifier, histogram argmax", result["probe_pixel_linear_histogram"], True),
        ("linear probe on mask class fractions (oracle)", result["probe_mask_fractions_oracle"]["test"], True),
    ]
    baseline = result["probe_band_means"]["test"]
    notes = ""
    if "specialist" in result:
        spec = result["specialist"]
        rows.append((f"trained {spec['variant']} scene specialist (median of {len(spec['runs'])} seeds, "
                     f"min-max {spec['test_min']:.3f}-{spec['test_max']:.3f})", spec["test_median"],
                     spec["measured_in_this_run"]))
        notes += _specialist_note(spec, baseline)
    if "segmentation_specialist" in result:
        spec = result["segmentation_specialist"]
        rows.append((f"trained {spec['variant']} land-cover segmentation specialist, predicted histogram argmax "
                     f"(median of {len(spec['runs'])} seeds, min-max {spec['test_min']:.3f}-{spec['test_max']:.3f})",
                     spec["test_median"], True))
        notes += _segmenter_note(spec, baseline)
    table = "\n".join(f"| {name} | {acc:.3f} | {'yes' if now else 'no (stored)'} |" for name, acc, now in rows)
    share = result["dominant_share"]
    tiles = result["tiles"]
    atomic_write_text(RESULTS / "synth_hardness.md", (
        f"# Synthetic scene task hardness ({preset} world, seed {result['seed']}, {result['sensor']} "
        f"{result['tile_size']}x{result['tile_size']}, {tiles['train']} train / {tiles['val']} val / "
        f"{tiles['test']} test tiles, {len(result['classes'])} classes)\n\n"
        f"Linear probes: L2 penalty chosen on val, accuracy on test. Test accuracy is scene accuracy throughout.\n\n"
        f"| probe | test accuracy | measured in this run |\n|---|---|---|\n{table}\n\n"
        f"Dominant class share: median {share['median']:.2f} (p10 {share['p10']:.2f}, p90 {share['p90']:.2f}); "
        f"{share['within_0.35_0.60']:.0%} of tiles between 0.35 and 0.60.\n"
        f"Per-pixel linear classifier pixel accuracy: {result['probe_pixel_linear_pixel_accuracy']:.3f}.\n" + notes
    ))


if __name__ == "__main__":
    main()
