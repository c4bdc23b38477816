"""Issue 25's targets in one place: eosfed inside TerraTorch, torchgeo datasets in, CodeCarbon energy,
Flower's differential privacy, and what the README's install costs.

Runs the tests that carry each target (their pass/fail is the value), reads the DP benchmark's results
(``benchmarks/dp.py`` -> ``dp.json``) and times ``pip install -e ".[dev]"`` into a fresh virtual
environment against the same install without the ecosystem extras (``terratorch``, ``torchgeo``).

Usage: python benchmarks/ecosystem.py [--skip-install]
Writes benchmarks/results/ecosystem.json and ecosystem.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from geodata.files import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
log = logging.getLogger("ecosystem")

# target -> the tests that carry it (pytest node ids, relative to the repository)
TESTED = {
    "TerraTorch fit of the YAML, the student, a few steps on real wildfire-s2":
        ["tests/test_terratorch.py::test_terratorch_fit_of_the_yaml_on_wildfire[student]"],
    "TerraTorch fit of the YAML, a specialist, a few steps on real wildfire-s2":
        ["tests/test_terratorch.py::test_terratorch_fit_of_the_yaml_on_wildfire[specialist]"],
    "TerraTorch backbone contract (student, specialist, registry ensemble) and one-line refusals":
        ["tests/test_terratorch.py::test_backbone_contract", "tests/test_terratorch.py::test_bad_input_is_refused_in_one_line"],
    "eosfed manifest torchgeo: EuroSAT in torchgeo's layout, a specialist trains on it":
        ["tests/test_torchgeo_manifest.py"],
    "CodeCarbon energy and carbon per phase with its method in the report":
        ["tests/test_energy.py"],
    "DP on: epsilon per group in card, phase result and report":
        ["tests/test_privacy.py"],
}


def run_tests(nodes: list[str]) -> tuple[bool, str]:
    """Whether the pytest ``nodes`` pass (none skipped), and pytest's summary line."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *nodes],
                          cwd=REPO, capture_output=True, text=True)
    summary = (done.stdout.strip().splitlines() or ["no output"])[-1]
    return done.returncode == 0 and "skipped" not in summary, summary


def install_seconds(extras: str, without: tuple[str, ...] = ()) -> float:
    """Wall seconds of a fresh venv plus ``pip install -e .[extras]`` (``without``: the dev extra's packages
    minus these, installed by name instead)."""
    with tempfile.TemporaryDirectory(prefix="eosfed-venv-") as tmp:
        venv = Path(tmp) / "venv"
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        if without:
            subprocess.run([*pip, "-e", str(REPO), *without], check=True)
        else:
            subprocess.run([*pip, "-e", f"{REPO}[{extras}]"], check=True)
        return time.perf_counter() - start


def target(name: str, value, threshold: str, met: bool, note: str = "") -> dict:
    return {"target": name, "value": value, "threshold": threshold, "met": bool(met), "note": note}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-install", action="store_true", help="leave out the two timed installs")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    targets = []
    for name, nodes in TESTED.items():
        log.info("running %s", " ".join(nodes))
        ok, summary = run_tests(nodes)
        targets.append(target(name, summary, "passes, nothing skipped", ok, " ".join(nodes)))
    dp = json.loads((RESULTS / "dp.json").read_text())
    for t in dp["targets"]:
        targets.append({**t, "note": f"benchmarks/dp.py: {t.get('note', '')}"})
    if not args.skip_install:
        with_extras = install_seconds("dev")
        before = install_seconds("", without=("pytest>=8", "pytest-timeout>=2.3", "pillow>=10"))
        targets.append(target("pip install -e '.[dev]' time / the same without the terratorch and torchgeo extras",
                              round(with_extras / before, 2), "<= 2", with_extras <= 2 * before,
                              f"{with_extras:.0f} s vs {before:.0f} s, fresh venvs, local package index"))
    record = {"benchmark": "ecosystem", "setup": {"python": platform.python_version(), "machine": platform.machine()},
              "targets": targets}
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.results / "ecosystem.json", json.dumps(record, indent=1))
    lines = ["# Ecosystem (issue 25): TerraTorch, torchgeo, CodeCarbon, differential privacy, install cost", "",
             f"Python {record['setup']['python']}, {record['setup']['machine']}.", "",
             "| target | value | threshold | met | note |", "|---|---|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']} | {t['threshold']} | {'yes' if t['met'] else '**no**'} | {t['note']} |"
              for t in targets]
    atomic_write_text(args.results / "ecosystem.md", "\n".join(lines) + "\n")
    log.info("results in %s", args.results / "ecosystem.json")


if __name__ == "__main__":
    main()
