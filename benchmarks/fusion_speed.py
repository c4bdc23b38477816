"""Fusion speed goals (issue 4): cached distillation vs plain student training, and teacher feature
extraction vs the bare timm forward passes it wraps.

1. Epoch cost: one distillation epoch over cached teacher targets (teachers never run) against one
   plain supervised epoch of the same student (pooled linear head, cross-entropy, AdamW) on the same
   in-memory images. Goal: ratio <= 1.15.
2. Extraction throughput: ``extract_teacher_features`` (view planning, band selection and reordering,
   normalisation, forward, pooling, fp16) against the specialist's timm encoder called on inputs
   already selected and normalised. Goal: ratio >= 0.9.

The two kinds of epoch (and of extraction pass) alternate, and the median of the per-pair ratios is
reported, so load from other processes affects both sides alike. Images are random tensors in
physical units: cost does not depend on pixel values.

Usage: python benchmarks/fusion_speed.py [--batches 12 --batch-size 16 --size 64 --pairs 5 --threads 1]
Writes benchmarks/results/fusion_speed.json and fusion_speed.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from fusion.adaptors import Adaptors, TeacherRef
from fusion.distill import DistillConfig, Distiller
from fusion.student import Student
from fusion.teacher_cache import TeacherCache, extract_teacher_features, fill_cache
from geodata.files import atomic_write_text
from geodata.sensors import get_sensor
from pipeline.settings import ExperimentConfig
from specialists import Specialist, SpecialistCard
from specialists.heads import PooledLinearHead
from specialists.io import save_specialist

RESULTS = Path(__file__).resolve().parent / "results"
S2_L1C = get_sensor("sentinel2_l1c").bands  # input order (13 bands)
S2_L2A = get_sensor("sentinel2_l2a").bands  # specialist order (12 bands): a real reorder + drop
AERIAL = get_sensor("aerial_rgbn").bands


def make_teacher(name: str, sensor: str, bands: tuple[str, ...], seed: int, folder: Path) -> Specialist:
    torch.manual_seed(seed)
    card = SpecialistCard(name=name, institutions=[name], sensor=sensor, bands=list(bands),
                          norm_mean=[0.1] * len(bands), norm_std=[0.05] * len(bands), task="scene",
                          task_type="classification", classes=["a", "b"])
    specialist = Specialist.from_card(card).eval()
    save_specialist(specialist, folder / name)  # sets weights_sha256, the cache key
    return specialist


def make_batches(n: int, batch_size: int, size: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(batch_size, len(S2_L1C), size, size, generator=g) * 0.4, "bands": S2_L1C,
             "id": [f"b{b}-{i}" for i in range(batch_size)], "target": torch.randint(0, 10, (batch_size,), generator=g)}
            for b in range(n)]


def plain_epoch(student: Student, head: nn.Module, optimizer: torch.optim.Optimizer, batches: list[dict]) -> float:
    start = time.perf_counter()
    student.train()
    for batch in batches:
        loss = nn.functional.cross_entropy(head(student(batch["image"], batch["bands"])), batch["target"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def epoch_cost(teachers: dict[str, Specialist], batches: list[dict], pairs: int) -> dict:
    cache = TeacherCache()
    start = time.perf_counter()
    fill_cache(cache, teachers, batches, ExperimentConfig.tolerance_nm)
    fill_seconds = time.perf_counter() - start
    calls = {n: 0 for n in teachers}
    for n, t in teachers.items():
        t.register_forward_hook(lambda *_, n=n: calls.__setitem__(n, calls[n] + 1))
    distill_student = Student.create(seed=0)
    adaptors = Adaptors(distill_student.feature_dims)
    for name, spec in teachers.items():
        adaptors.ensure(TeacherRef.of(spec, name)).set_target_stats(cache.target_stats(spec.card.weights_sha256))
    distiller = Distiller(distill_student, adaptors, cache, DistillConfig(epochs=1, drop_prob=0.5), seed=0)
    plain_student = Student.create(seed=0)
    head = PooledLinearHead(plain_student.feature_dims[-1], 10)
    optimizer = torch.optim.AdamW(list(plain_student.parameters()) + list(head.parameters()), lr=1e-3)
    distiller.fit(batches)  # warm-up, not timed
    plain_epoch(plain_student, head, optimizer, batches)
    distill_s, plain_s = [], []
    for _ in range(pairs):
        distill_s.append(distiller.fit(batches).seconds[-1])
        plain_s.append(plain_epoch(plain_student, head, optimizer, batches))
    ratios = [d / p for d, p in zip(distill_s, plain_s)]
    return {"teachers": len(teachers), "teacher_fill_seconds": round(fill_seconds, 3),
            "teacher_calls_during_epochs": sum(calls.values()),
            "distill_epoch_s_median": round(statistics.median(distill_s), 3),
            "plain_epoch_s_median": round(statistics.median(plain_s), 3),
            "ratio_median": round(statistics.median(ratios), 3), "ratios": [round(r, 3) for r in ratios],
            "goal": "<= 1.15"}


def extraction_throughput(teacher: Specialist, batches: list[dict], pairs: int) -> dict:
    images = sum(b["image"].shape[0] for b in batches)
    order = [S2_L1C.index(b) for b in teacher.bands]
    ready = [teacher.normalise(b["image"][:, order]) for b in batches]  # what the bare encoder is given

    def bare() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for x in ready:
                teacher.encoder(x)
        return images / (time.perf_counter() - start)

    def wrapped() -> float:
        start = time.perf_counter()
        extract_teacher_features(teacher, batches, ExperimentConfig.tolerance_nm)
        return images / (time.perf_counter() - start)

    bare(), wrapped()  # warm-up
    bare_r, wrapped_r = [], []
    for _ in range(pairs):
        wrapped_r.append(wrapped())
        bare_r.append(bare())
    ratios = [w / b for w, b in zip(wrapped_r, bare_r)]
    return {"images": images, "extract_img_per_s_median": round(statistics.median(wrapped_r), 1),
            "bare_timm_img_per_s_median": round(statistics.median(bare_r), 1),
            "ratio_median": round(statistics.median(ratios), 3), "ratios": [round(r, 3) for r in ratios],
            "goal": ">= 0.9"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        teachers = {
            "s2_a": make_teacher("s2_a", "sentinel2_l2a", S2_L2A, 1, Path(tmp)),
            "s2_b": make_teacher("s2_b", "sentinel2_l2a", S2_L2A, 2, Path(tmp)),
            "aerial": make_teacher("aerial", "aerial_rgbn", AERIAL, 3, Path(tmp)),  # reads S2 by equivalence
        }
        batches = make_batches(args.batches, args.batch_size, args.size)
        epoch = epoch_cost(teachers, batches, args.pairs)
        extraction = extraction_throughput(teachers["s2_a"], batches, args.pairs)
    setup = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "threads": args.threads,
             "device": "cpu", "batches": args.batches, "batch_size": args.batch_size, "size": args.size,
             "input_bands": len(S2_L1C), "pairs": args.pairs, "statistic": "median of per-pair ratios",
             "variant": "convnextv2_atto (student and teachers)"}
    record = {"setup": setup, "cached_distill_epoch_vs_plain_epoch": epoch,
              "teacher_extraction_vs_bare_timm": extraction}
    atomic_write_text(RESULTS / "fusion_speed.json", json.dumps(record, indent=1))
    table = [
        "| measurement | ours | baseline | ratio (median) | goal |", "|---|---|---|---|---|",
        f"| cached distillation epoch vs plain student epoch ({epoch['teachers']} teachers, "
        f"{epoch['teacher_calls_during_epochs']} teacher calls during epochs) | {epoch['distill_epoch_s_median']} s | "
        f"{epoch['plain_epoch_s_median']} s | {epoch['ratio_median']} | <= 1.15 |",
        f"| teacher feature extraction vs bare timm forward | {extraction['extract_img_per_s_median']} img/s | "
        f"{extraction['bare_timm_img_per_s_median']} img/s | {extraction['ratio_median']} | >= 0.9 |",
    ]
    text = (f"# Fusion speed (CPU, {args.threads} thread(s), {args.batches} batches x {args.batch_size} x "
            f"{len(S2_L1C)} bands x {args.size}x{args.size}, median of {args.pairs} alternating pairs)\n\n"
            + "\n".join(table)
            + f"\n\nTeacher cache fill (once, before training): {epoch['teacher_fill_seconds']} s.\n")
    atomic_write_text(RESULTS / "fusion_speed.md", text)
    print(text)


if __name__ == "__main__":
    main()
