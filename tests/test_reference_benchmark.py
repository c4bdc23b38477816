"""Smoke test of the reference benchmark: its --quick path end to end on a tiny world.

Checks that the JSON holds every field the report needs, with finite values; never the quality numbers.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "reference.py"
CONFIG = ROOT / "configs" / "benchmark" / "reference.yaml"


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.slow
def test_quick_run_writes_every_required_field(tmp_path, shared_data):
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--redistill", "--out", str(tmp_path / "work"),
                           "--results", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "reference_quick.json").read_text())
    config = yaml.safe_load(CONFIG.read_text())
    specialists = [s["name"] for s in config["specialists"]]
    tasks = [t["name"] for t in config["downstream"]]

    assert record["quick"] is True
    assert [s["name"] for s in record["specialists"]] == specialists
    assert [t["name"] for t in record["tasks"]] == tasks
    for task in record["tasks"]:
        assert task["applicable"], f"{task['name']}: no specialist reads it"
        assert _finite(task["params"]["student"]) and _finite(task["params"]["ensemble"])
        assert _finite(task["img_per_s"]["student"]) and _finite(task["img_per_s"]["ensemble"])
        encoders = {r["encoder"] for r in task["results"]}
        assert {"student", "student-pruned", "ensemble", "ensemble-pruned", "random", *task["applicable"]} <= encoders
        assert all(_finite(r["mean"]) and _finite(r["std"]) for r in task["results"])

    summary = record["summary"]
    for row in summary["rows"]:
        for encoder in ("student", "student-pruned", "ensemble", "ensemble-pruned", "random", "best_specialist_score"):
            assert _finite(row[encoder]["mean"]) and _finite(row[encoder]["std"]), (row["task"], encoder)
        assert row["best_specialist"] in specialists
    assert all(_finite(v) for v in summary["means"].values())

    combined = {c["name"]: c for c in record["contributions"]["combined"]}
    assert set(combined) == set(specialists)
    assert all(_finite(c[k]) for c in combined.values() for k in ("shapley", "ci_low", "ci_high", "loo", "gate"))
    assert 1 <= len(record["contributions"]["kept"]) < len(specialists)

    names = [t["target"] for t in record["targets"]]
    for expected in ("student mean / full-ensemble mean", "student mean - mean of per-task best specialist",
                     "student params", "student img/s", "unseen sensor landsat8_oli: student - random-init",
                     "unseen sensor landsat8_oli: student - best specialist", "has the lowest Shapley",
                     "Shapley interval upper bound", "pruned-ensemble mean / full-ensemble mean",
                     "cached distillation epoch", "teacher extraction", "pruned student mean / full student mean",
                     "pruned student: teacher extractions"):
        assert any(expected in n for n in names), f"target {expected!r} missing from {names}"
    for t in record["targets"]:
        assert _finite(t["value"]) and isinstance(t["met"], bool), t
    assert _finite(record["runtime_s"]["total"]) and _finite(record["pipeline_s"]["total"])
    assert record["distill"]["teacher_extractions"] > 0 and record["distill"]["teacher_calls_during_epochs"] == 0
    assert record["redistill"]["pruned"]["teacher_extractions"] == 0  # the kept teachers' targets were cached
    assert sorted(record["redistill"]["pruned"]["teachers"]) == sorted(record["contributions"]["kept"])
    assert "## Targets" in (tmp_path / "reference_quick.md").read_text()
