"""The student's recipe, one option at a time, on the real-data benchmark (issue 21).

Each option is a pair of ``benchmarks/real.py`` result files that differ in that option only (same
specialists, proxy, probes and 3 seeds); this script tabulates them, it trains nothing. Options whose
``on`` file is missing are listed as not measured.

Usage: python benchmarks/student_recipe.py
Writes benchmarks/results/student_recipe.json and student_recipe.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from geodata.files import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
ENCODERS = ("student", "ensemble", "best specialist", "random-init", "band-stats")

# option, off file, on file, how the pair was made
OPTIONS = [
    ("start from the shipped base (train.init, distill.init)", "real_random_last_scale.json",
     "real_base_last_scale.json", "real.py --init random vs --init base, both with last-stage pooling"),
    ("pyramid-pooled features (every stage's means and stds)", "real_base_last_scale.json", "real.json",
     "real.py --init base before and after pyramid pooling"),
    ("PHI-S teacher balancing (distill.balance=phi_s)", "real.json", "real_phi_s.json",
     "real.py --init base --balance channel vs phi_s: the same specialists, distillation only differs"),
    ("multi-resolution distillation (distill.crop_sizes=[32,48,64])", "real.json", "real_crops.json",
     "real.py --init base vs --crop-sizes 32,48,64 (centre crops, one size per batch, targets cached per size): "
     "the same specialists and 64 px targets, distillation only differs"),
]


def summary(record: dict, fraction: float = 1.0, protocol: str = "deep") -> dict:
    return next(s for s in record["summaries"] if s["fraction"] == fraction and s["protocol"] == protocol)


def per_task(record: dict, fraction: float) -> dict[str, dict[str, float]]:
    return {row["task"]: {e: row[e]["mean"] for e in ENCODERS} for row in summary(record, fraction)["rows"]}


def means(record: dict, fraction: float) -> dict[str, float]:
    tasks = per_task(record, fraction)
    return {e: sum(t[e] for t in tasks.values()) / len(tasks) for e in ENCODERS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows, targets = [], []
    for option, off_name, on_name, how in OPTIONS:
        off_path, on_path = args.results / off_name, args.results / on_name
        if not (off_path.is_file() and on_path.is_file()):
            rows.append({"option": option, "measured": False, "off": off_name, "on": on_name, "how": how})
            continue
        off, on = json.loads(off_path.read_text()), json.loads(on_path.read_text())
        entry = {"option": option, "measured": True, "off": off_name, "on": on_name, "how": how,
                 "seeds": on["seeds"], "fractions": {}}
        for fraction in sorted(set(off["fractions"]) & set(on["fractions"]), reverse=True):
            entry["fractions"][str(fraction)] = {
                "off": means(off, fraction), "on": means(on, fraction),
                "tasks": {t: {"off": v["student"], "on": per_task(on, fraction)[t]["student"]}
                          for t, v in per_task(off, fraction).items()}}
        rows.append(entry)
        targets.append({"target": f"{option}: its on/off row, 3 seeds", "value": len(on["seeds"]),
                        "threshold": ">= 3 seeds", "met": len(on["seeds"]) >= 3, "note": how})
    chosen = json.loads((args.results / "real.json").read_text())
    m = means(chosen, 1.0)
    targets.append({"target": "student mean - ensemble mean (real.py, the default recipe, all labels)",
                    "value": round(m["student"] - m["ensemble"], 4), "threshold": ">= 0",
                    "met": m["student"] >= m["ensemble"], "note": "real.json, deep protocol, 4 real tasks"})
    record = {"benchmark": "student_recipe", "options": rows, "targets": targets}
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.results / "student_recipe.json", json.dumps(record, indent=1))
    atomic_write_text(args.results / "student_recipe.md", markdown(record))


def markdown(record: dict) -> str:
    lines = ["# The student's recipe on real data, one option at a time", "",
             "Each row: `benchmarks/real.py` with the option off and on (same specialists, proxy, probes; "
             "3 seeds; mean over the 4 real tasks of `../shared/data`, deep protocol). Student / ensemble / "
             "band-stats means.", "",
             "| option | labels | student off | student on | ensemble off / on | band-stats | per task (student off -> on) | how |",
             "|---|---|---|---|---|---|---|---|"]
    for row in record["options"]:
        if not row["measured"]:
            lines.append(f"| {row['option']} | - | not measured | | | | | {row['how']} |")
            continue
        for fraction, f in row["fractions"].items():
            tasks = "; ".join(f"{t} {v['off']:.3f} -> {v['on']:.3f}" for t, v in f["tasks"].items())
            lines.append(f"| {row['option']} | {float(fraction):g} | {f['off']['student']:.3f} | "
                         f"**{f['on']['student']:.3f}** | {f['off']['ensemble']:.3f} / {f['on']['ensemble']:.3f} | "
                         f"{f['on']['band-stats']:.3f} | {tasks} | {row['how']} |")
    lines += ["", "## Targets", "", "| target | value | threshold | met |", "|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']} | {t['threshold']} | {'yes' if t['met'] else '**no**'} |"
              for t in record["targets"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
