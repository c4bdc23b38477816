"""Specialist training and inference throughput (images/s, median of 3 runs) on random tiles.

Training step = forward + classification head + cross-entropy + backward + AdamW step; inference =
forward of the 4-scale features under ``torch.no_grad``. One row per intra-op thread count. Records
the load average and ``OMP_WAIT_POLICY``: on a busy machine, spinning OpenMP threads stall badly.

Usage: python benchmarks/train_speed.py [--variant convnextv2_atto --bands 12 --size 64 --batch 64
       --threads 2 1 --steps 5 --device cpu]
Writes benchmarks/results/train_speed.json and train_speed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from geodata.files import atomic_write_text
from geodata.sensors import get_sensor
from specialists import Specialist, SpecialistCard
from specialists.heads import build_head, task_loss
from specialists.train import TrainConfig, make_optimizer

RESULTS = Path(__file__).resolve().parent / "results"


def images_per_second(step: Callable[[], None], images_per_step: int, steps: int, device: torch.device,
                      runs: int = 3) -> tuple[float, list[float]]:
    """Median (and all runs) of images/s over ``runs`` runs of ``steps`` steps, after 2 warm-up steps."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(2):
        step()
    sync()
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        rates.append(steps * images_per_step / (time.perf_counter() - start))
    return statistics.median(rates), rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="convnextv2_atto")
    parser.add_argument("--bands", type=int, default=12, help="first N bands of Sentinel-2 L2A")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--steps", type=int, default=5, help="batches per timed run")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    bands = list(get_sensor("sentinel2_l2a").bands[: args.bands])
    card = SpecialistCard(name="bench", institutions=["bench"], sensor="sentinel2_l2a", bands=bands,
                          norm_mean=[0.1] * len(bands), norm_std=[0.05] * len(bands), task="scene",
                          task_type="classification", classes=[f"c{i}" for i in range(10)], variant=args.variant)
    specialist = Specialist.from_card(card).to(device)
    head = build_head("classification", specialist.feature_dims, 10).to(device)
    optimizer = make_optimizer([specialist, head], TrainConfig())
    criterion = task_loss("classification")
    x = torch.rand(args.batch, len(bands), args.size, args.size, device=device) * 0.3
    y = torch.randint(0, 10, (args.batch,), device=device)

    def train_step() -> None:
        loss = criterion(head(specialist(x), x.shape[-2:]), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def infer_step() -> None:
        specialist(x)

    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        load = os.getloadavg()[0]
        specialist.train(), head.train()
        train, train_runs = images_per_second(train_step, args.batch, args.steps, device)
        specialist.eval()
        infer, infer_runs = images_per_second(infer_step, args.batch, args.steps, device)
        rows.append({
            "threads": threads, "load_average_1min": round(load, 2),
            "train_images_per_s": round(train, 1), "train_runs": [round(r, 1) for r in train_runs],
            "inference_images_per_s": round(infer, 1), "inference_runs": [round(r, 1) for r in infer_runs],
        })
    record = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch": torch.__version__, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "variant": args.variant, "bands": len(bands), "size": args.size, "batch": args.batch,
        "num_params": card.num_params, "steps_per_run": args.steps, "runs": 3, "statistic": "median",
        "results": rows,
    }
    atomic_write_text(RESULTS / "train_speed.json", json.dumps(record, indent=1))
    table = [
        f"Specialist throughput: {args.variant}, {len(bands)} bands, {args.size}x{args.size}, batch {args.batch}, "
        f"{record['device']}, OMP_WAIT_POLICY {record['omp_wait_policy']} (images/s, median of 3 runs of "
        f"{args.steps} batches).",
        "",
        "| threads | 1-min load | train (fwd + head + bwd + AdamW) | inference (4-scale features) |",
        "|---|---|---|---|",
    ]
    table += [f"| {r['threads']} | {r['load_average_1min']} | {r['train_images_per_s']} | "
              f"{r['inference_images_per_s']} |" for r in rows]
    atomic_write_text(RESULTS / "train_speed.md", "\n".join(table) + "\n")

if __name__ == "__main__":
    main()
