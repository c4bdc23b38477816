"""Where every second of the default ``eosfed run`` goes: a flame-graph-like table, both ways.

- ``in_process``: the experiment on :class:`server.testing.InProcessGrid` (the same ClientApp handlers in
  this process, one after another) under a stack sampler (a thread reading the main thread's Python stack
  every ``--interval-ms``; each sample weighs the time since the one before, so the rows sum to the wall
  time). Each sample is labelled phase > activity > operation from its stack (:data:`ACTIVITIES`,
  :data:`OPERATIONS`): e.g. ``evaluate > probe: segmentation head > backward``. cProfile/pyinstrument
  style, without their cost on every call and without a dependency. The folded stacks (flamegraph.pl's
  input) are written beside the results (``profile_default.folded``).
- ``flower``: ``eosfed run``'s path (``flwr run . --stream`` on an isolated Flower home: the CLI, a local
  SuperLink started, the FAB built and sent, Ray and the simulation started, the ServerApp and ClientApps
  loaded); every streamed line is time-stamped as it arrives, so start-up (until the run is accepted, until
  the ServerApp's first line, until the first phase), each phase (checkpoint.json) and shutdown are split.
  ``--warm`` reruns it on the SuperLink the first run left running (``eosfed run``'s reuse of a live local
  SuperLink of the same checkout): the cold and warm start-ups side by side.
- ``imports``: seconds to import the CLI (``flwr.cli.app``), the ServerApp (``server.server_app``) and the
  ClientApp (``clients.client_app``) in a fresh interpreter (median of 3), what every SuperExec/Ray worker
  pays once.

The in-process way computes with ``--threads`` torch threads (1); Flower's processes get the environment a
plain shell gives ``eosfed run`` (``--flower-threads`` sets OMP_NUM_THREADS); the machine's load average is
recorded before and after each run.

Usage: python benchmarks/profile_default.py [--ways in_process flower imports] [--experiment default]
       [--overrides "..."] [--warm] [--federation-config "client-resources-num-cpus=1"]
Writes benchmarks/results/profile_default.{json,md} (and .folded).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from geodata.files import atomic_write_text  # noqa: E402

__all__ = ["StackSampler", "label", "main"]

log = logging.getLogger(__name__)
RESULTS = Path(__file__).resolve().parent / "results"
WAYS = ("imports", "in_process", "flower")

# (label, path fragment, function name or None): the innermost frame that matches names the activity.
ACTIVITIES = (
    ("probe: segmentation head", "fusion/probes.py", "segmentation_probe"),
    ("probe: linear", "fusion/probes.py", "linear_probe"),
    ("probe: kNN", "fusion/probes.py", "knn_probe"),
    ("probe: feature extraction", "fusion/probes.py", "extract_features"),
    ("probe: baselines built", "fusion/baselines.py", None),
    ("prune: contributions", "fusion/contrib.py", None),
    ("prune: contributions", "pipeline/contrib.py", None),
    ("prune: redistill", "pipeline/distill.py", "redistil"),
    ("distill: teacher targets", "fusion/teacher_cache.py", None),
    ("distill: proxy tiles (world generation, statistics)", "pipeline/proxy.py", None),
    ("distill: student epochs", "fusion/distill.py", None),
    ("distill: student epochs", "pipeline/distill.py", None),
    ("train: validation", "specialists/train.py", "evaluate"),
    ("train: local epochs", "specialists/train.py", None),
    ("train: local epochs", "clients/training.py", None),
    ("train: FedAvg merge and checks", "pipeline/fedavg.py", None),
    ("teacher features", "clients/teacher.py", None),
    ("node: {func} (other)", "clients/handlers.py", None),
    ("enrol: registry", "fusion/registry.py", None),
    ("report: plots and tables", "server/phases/report.py", None),
    ("messages (grid, encode/decode)", "server/messaging.py", None),
    ("run set-up (settings, checkpoint)", "server/run.py", None),
)
# The innermost frame that matches names the operation.
OPERATIONS = (
    ("imports", "<frozen importlib._bootstrap", None),
    ("backward", "torch/autograd/", None),
    ("backward", "torch/_tensor.py", "backward"),
    ("optimizer step", "torch/optim/", None),
    ("world generation", "geodata/synth/", None),
    ("band statistics", "geodata/stats.py", None),
    ("data loading (tile reads, decode, normalise)", "geodata/", None),
    ("data loading (tile reads, decode, normalise)", "rasterio/", None),
    ("data loading (tile reads, decode, normalise)", "torch/utils/data/", None),
    ("serialisation (wire, records, safetensors)", "wire/", None),
    ("serialisation (wire, records, safetensors)", "safetensors/", None),
    ("serialisation (wire, records, safetensors)", "flwr/", None),
    ("metrics", "torchmetrics/", None),
    ("forward", "torch/nn/modules/module.py", None),
    ("forward", "timm/", None),
    ("plots", "matplotlib/", None),
    ("energy tracking", "codecarbon/", None),
    ("energy tracking", "pipeline/energy.py", None),
    ("logging and progress bars", "tqdm/", None),
    ("logging and progress bars", "logging/", None),
)


def _match(rules: Sequence[tuple[str, str, str | None]], stack: Sequence[tuple[str, str]], default: str) -> str:
    """The first rule matched by the innermost frame that matches any (``stack`` is outermost first)."""
    for filename, func in reversed(stack):
        for name, fragment, wanted in rules:
            if fragment in filename and (wanted is None or wanted == func):
                return name.format(func=func)
    return default


def label(stack: Sequence[tuple[str, str]]) -> tuple[str, str]:
    """(activity, operation) of one sampled stack of (filename, function), outermost first."""
    op = _match(OPERATIONS, stack, "python (own code, torch ops)")
    return ("module imports" if op == "imports" else _match(ACTIVITIES, stack, "other")), op


class StackSampler:
    """Samples ``thread_id``'s Python stack every ``interval_s`` in a background thread. ``weights``:
    folded stack -> seconds (each sample counts the time since the previous one)."""

    def __init__(self, thread_id: int, interval_s: float = 0.01) -> None:
        self.thread_id, self.interval_s = thread_id, interval_s
        self.weights: Counter[tuple[tuple[str, str], ...]] = Counter()
        self.samples: list[tuple[float, float, tuple[tuple[str, str], ...]]] = []  # (unix time, seconds, stack)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="stack-sampler")

    def _loop(self) -> None:
        last = time.perf_counter()
        while not self._stop.wait(self.interval_s):
            frame = sys._current_frames().get(self.thread_id)
            now = time.perf_counter()
            stack = []
            while frame is not None:
                stack.append((frame.f_code.co_filename, frame.f_code.co_name))
                frame = frame.f_back
            key = tuple(reversed(stack))
            self.weights[key] += now - last
            self.samples.append((time.time(), now - last, key))
            last = now

    def __enter__(self) -> "StackSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def table(self, windows: dict[str, tuple[float, float]]) -> dict[str, Any]:
        """phase -> {seconds, activities: activity -> {seconds, operations: op -> seconds}}; a sample's phase is
        the window (unix start, end) it falls in, else start-up and shutdown."""
        tree: dict[str, Any] = {}
        for when, seconds, stack in self.samples:
            phase = next((n for n, (a, b) in windows.items() if a <= when < b),
                         "outside the phases (imports, set-up, shutdown)")
            activity, op = label(stack)
            p = tree.setdefault(phase, {"seconds": 0.0, "activities": {}})
            a = p["activities"].setdefault(activity, {"seconds": 0.0, "operations": defaultdict(float)})
            p["seconds"] += seconds
            a["seconds"] += seconds
            a["operations"][op] += seconds
        for p in tree.values():
            for a in p["activities"].values():
                a["operations"] = {k: round(v, 2) for k, v in sorted(a["operations"].items(), key=lambda kv: -kv[1])}
                a["seconds"] = round(a["seconds"], 2)
            p["activities"] = dict(sorted(p["activities"].items(), key=lambda kv: -kv[1]["seconds"]))
            p["seconds"] = round(p["seconds"], 2)
        return tree

    def folded(self) -> str:
        """flamegraph.pl's input: ``frame;frame;... milliseconds`` per distinct stack (repo-relative names)."""
        lines = []
        for stack, seconds in self.weights.most_common():
            names = [f"{_short(f)}:{fn}" for f, fn in stack]
            lines.append(f"{';'.join(names)} {round(seconds * 1000)}")
        return "\n".join(lines) + "\n"


def _short(filename: str) -> str:
    for root in (str(REPO) + "/", "site-packages/"):
        if root in filename:
            return filename.split(root, 1)[1]
    return filename


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _phases(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Per phase: seconds and start (unix time, to the second) from checkpoint.json."""
    checkpoint = json.loads((run_dir / "checkpoint.json").read_text())
    return {name: {"seconds": round(entry["seconds"], 2),
                   "started": datetime.fromisoformat(entry["started"]).timestamp()}
            for name, entry in checkpoint["phases"].items()}


class _PhaseWindows(logging.Handler):
    """Phase windows (unix start, end) from server.run's ``[i/n] phase ...`` / ``... finished in`` lines."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.windows: dict[str, tuple[float, float]] = {}
        self._open: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        match = re.match(r"\[\d+/\d+\] (\w+) (\.\.\.|finished in)", record.getMessage())
        if match and match.group(2) == "...":
            self._open[match.group(1)] = record.created
        elif match:
            self.windows[match.group(1)] = (self._open.pop(match.group(1), record.created), record.created)


def _quality(run_dir: Path) -> dict[str, dict[str, float]]:
    """Per institution, encoder -> probe score at the largest label fraction (the report's numbers)."""
    path = run_dir / "phases" / "evaluate.json"
    if not path.is_file():  # a run stopped before evaluate
        return {}
    result = json.loads(path.read_text())
    out = {}
    for name, inst in result["institutions"].items():
        top = max(r["fraction"] for r in inst["results"])
        out[name] = {f"{r['encoder']} {r['method']}": round(r["mean"], 4) for r in inst["results"]
                     if r["fraction"] == top}
    return out


# ---------------------------------------------------------------------------------------------
# Ways


def way_imports(repeats: int = 3) -> dict[str, Any]:
    """Median seconds of a fresh interpreter importing each entry point (the first also warms the page cache)."""
    out = {}
    for module in ("flwr.cli.app", "server.server_app", "clients.client_app"):
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO, check=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
            times.append(time.perf_counter() - t0)
        out[module] = round(sorted(times[1:])[len(times[1:]) // 2], 2)
    out["python_bare"] = round(min(_timed([sys.executable, "-c", "pass"]) for _ in range(3)), 2)
    return {"seconds": out, "load": _load()}


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def way_in_process(experiment: str, overrides: list[str], work: Path, interval_s: float, nodes: int,
                   threads: int) -> tuple[dict[str, Any], str]:
    """The run on :class:`InProcessGrid` under :class:`StackSampler`; its table, phases and quality numbers."""
    import torch

    torch.set_num_threads(threads)
    load = _load()
    t0 = time.perf_counter()
    windows = _PhaseWindows()
    logging.getLogger("server.run").addHandler(windows)
    with StackSampler(threading.get_ident(), interval_s) as sampler:
        from server.run import run_experiment  # imports inside the sampled window
        from server.testing import InProcessGrid

        config = {"experiment": experiment, "run-name": "in-process",
                  "overrides": shlex.join([f"output_dir={work / 'outputs'}", f"cache_dir={work / 'cache'}", *overrides])}
        grid = InProcessGrid({100 + p: {"partition-id": p, "num-partitions": nodes} for p in range(nodes)})
        run_dir = run_experiment(grid, config, flower_run_id=1)
    wall = time.perf_counter() - t0
    return {"wall_s": round(wall, 2), "sampled_s": round(sum(sampler.weights.values()), 2),
            "interval_ms": interval_s * 1000, "threads": threads, "nodes": nodes,
            "phases": {n: p["seconds"] for n, p in _phases(run_dir).items()}, "table": sampler.table(windows.windows),
            "quality": _quality(run_dir), "load_before": load, "load_after": _load()}, sampler.folded()


# Streamed lines that mark a start-up step: (step, pattern); the first line matching each is time-stamped.
MARKS = (
    ("run accepted by the SuperLink (CLI, SuperLink start, FAB built and sent)", r"Successfully started run"),
    ("ServerApp loaded (simulation and ServerApp processes, imports)", r"Run \S+ \(experiment"),
    ("first phase starts (experiment composed, checkpoint opened)", r"\[1/\d+\] discover \.\.\."),
)


def way_flower(experiment: str, overrides: list[str], work: Path, federation: list[str], warm: bool,
               threads: int | None, save: Callable[[list[dict[str, Any]]], None]) -> list[dict[str, Any]]:
    """``eosfed run``'s path (its federation config: :func:`eosfed.commands.run.client_cpus` unless given), cold
    (fresh Flower home: a SuperLink is started) and, with ``warm``, again on the SuperLink the first left
    running; every streamed line time-stamped. ``threads``: OMP_NUM_THREADS of Flower's processes (default:
    unset, as from a plain shell: Ray gives each ClientApp its CPUs' count). ``save(runs)`` after each run."""
    from eosfed.commands.run import client_cpus, federation_args
    from server.local import flwr_run, flower_env, local_superlink_ports, run_status, stop_local_superlink

    work.mkdir(parents=True, exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix="profile-flower-", dir=work))
    runs = []
    envs: list[dict[str, str]] = []
    try:
        for attempt in (["cold", "warm"] if warm else ["cold"]):
            ports = local_superlink_ports(state / "flwr-home")
            env = flower_env(state, ports)
            envs.append(env)
            for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # as from a plain shell, unless --flower-threads
                env.pop(key, None)
                if threads:
                    env[key] = str(threads)
            stamps: list[tuple[float, str]] = []
            run_name = f"flower-{attempt}"
            config = {"experiment": experiment, "run-name": run_name,
                      "overrides": shlex.join([f"output_dir={work / 'outputs'}", f"cache_dir={work / f'cache-{attempt}'}",
                                               *overrides])}
            extra = federation_args([*client_cpus(federation), *federation])  # as eosfed run passes them
            load = _load()
            t0 = time.time()
            run_id, _ = flwr_run(env, None, config, 3600, extra, lambda line: stamps.append((time.time(), line)))
            t_end = time.time()
            status = run_status(env, None, run_id)
            phases = _phases(work / "outputs" / run_name)
            marks = {}
            for step, pattern in MARKS:
                hit = next((t for t, line in stamps if re.search(pattern, line)), None)
                marks[step] = round(hit - t0, 2) if hit is not None else None
            first = min(p["started"] for p in phases.values())
            last_end = max(p["started"] + p["seconds"] for p in phases.values())
            runs.append({"attempt": attempt, "superlink": "reused" if ports else "started", "wall_s": round(t_end - t0, 2),
                         "status": status, "marks_s": marks, "first_phase_at_s": round(first - t0, 2),
                         "after_last_phase_s": round(t_end - last_end, 2),
                         "phases": {n: p["seconds"] for n, p in phases.items()},
                         "quality": _quality(work / "outputs" / run_name), "federation_config": extra[1::2],
                         "omp_num_threads": env.get("OMP_NUM_THREADS"),
                         "load_before": load, "load_after": _load()})
            log.info("flower %s: %.1f s (%s)", attempt, t_end - t0, status)
            save(runs)
    finally:
        for env in envs:  # the first started the SuperLink (its Ray temp dir too); the others only made a dir
            stop_local_superlink(env)
    return runs


# ---------------------------------------------------------------------------------------------
# Report


def _rows(table: dict[str, Any], wall: float, min_s: float) -> list[str]:
    lines = ["| phase > activity > operation | seconds | share of wall |", "|---|---|---|"]
    for phase, p in sorted(table.items(), key=lambda kv: -kv[1]["seconds"]):
        lines.append(f"| **{phase}** | **{p['seconds']:.1f}** | **{p['seconds'] / wall:.0%}** |")
        for activity, a in p["activities"].items():
            if a["seconds"] < min_s:
                continue
            lines.append(f"| &nbsp;&nbsp;{activity} | {a['seconds']:.1f} | {a['seconds'] / wall:.1%} |")
            for op, s in a["operations"].items():
                if s >= min_s:
                    lines.append(f"| &nbsp;&nbsp;&nbsp;&nbsp;&nbsp;&nbsp;{op} | {s:.1f} | {s / wall:.1%} |")
    return lines


def render(record: dict[str, Any]) -> str:
    meta = record["meta"]
    lines = ["# Profile of the default run: where every second goes", "",
             f"{meta['cpus']} CPUs shared with other work (load average beside each run), torch {meta['torch']}, "
             f"flwr {meta['flwr']}; experiment `{meta['experiment']}` {' '.join(meta['overrides'])}".rstrip() + ".",
             f"Command: `{meta['command']}`.", ""]
    if "imports" in record:
        r = record["imports"]
        lines += ["## Start-up: imports in a fresh interpreter (median of 3)", "",
                  "| module | seconds |", "|---|---|"]
        lines += [f"| `{m}` | {s:.2f} |" for m, s in r["seconds"].items()]
        lines += ["", f"Load average {r['load']}.", ""]
    for run in record.get("flower", []):
        lines += [f"## Flower path ({run['attempt']}: SuperLink {run['superlink']}; federation config "
                  f"{run['federation_config'] or 'Flower default'})", "",
                  "| step | at s | seconds |", "|---|---|---|"]
        prev = 0.0
        for step, at in run["marks_s"].items():
            if at is not None:
                lines.append(f"| {step} | {at:.1f} | {at - prev:.1f} |")
                prev = at
        lines.append(f"| first phase started (checkpoint) | {run['first_phase_at_s']:.1f} | "
                     f"{run['first_phase_at_s'] - prev:.1f} |")
        for name, s in run["phases"].items():
            lines.append(f"| phase {name} | | {s:.1f} |")
        lines += [f"| after the last phase (report written, ServerApp exits, SuperLink/Ray stopped) | | "
                  f"{run['after_last_phase_s']:.1f} |",
                  f"| **wall** | | **{run['wall_s']:.1f}** |", "",
                  f"Status {run['status']}; load average before/after {run['load_before']} / {run['load_after']}.", ""]
    if "in_process" in record:
        r = record["in_process"]
        lines += [f"## In process: every second of the phases (stack samples every {r['interval_ms']:.0f} ms, "
                  f"{r['threads']} torch thread(s), {r['nodes']} simulated nodes in turn)", "",
                  f"Wall {r['wall_s']:.1f} s (sampled {r['sampled_s']:.1f} s); phases: "
                  + ", ".join(f"{n} {s:.1f} s" for n, s in r["phases"].items())
                  + f". Load average before/after {r['load_before']} / {r['load_after']}. Rows under "
                  f"{record['meta']['min_row_s']} s left out (they are in the JSON).", ""]
        lines += _rows(r["table"], r["wall_s"], record["meta"]["min_row_s"])
        lines.append("")
    quality = {k: v for k, v in (("baseline", record.get("baseline", {}).get("quality")),
                                 ("in process", record.get("in_process", {}).get("quality")),
                                 *((f"flower {r['attempt']}", r["quality"]) for r in record.get("flower", []))) if v}
    if quality:
        if "baseline" in record:
            b = record["baseline"]
            lines += [f"Baseline: {b['source']}; its phases: "
                      + ", ".join(f"{n} {s:.0f} s" for n, s in b["phases"].items())
                      + (f"; its report means: {b['means']}" if b.get("means") else "") + ".", ""]
        lines += ["## Quality numbers of these runs (largest label fraction; the report's)", "",
                  "| run | institution | scores |", "|---|---|---|"]
        for run, q in quality.items():
            for inst, scores in q.items():
                lines.append(f"| {run} | {inst} | " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    parser.add_argument("--experiment", default="default")
    parser.add_argument("--overrides", default="", help="Hydra overrides, space separated")
    parser.add_argument("--federation-config", action="append", default=[],
                        help="Flower federation config of the flower way (repeatable; default: eosfed run's)")
    parser.add_argument("--warm", action="store_true", help="flower: a second run on the SuperLink the first left")
    parser.add_argument("--interval-ms", type=float, default=10.0)
    parser.add_argument("--nodes", type=int, default=2, help="simulated nodes of the in-process run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the in-process way")
    parser.add_argument("--flower-threads", type=int, default=None,
                        help="OMP_NUM_THREADS of Flower's processes (default: unset, as eosfed run from a shell)")
    parser.add_argument("--min-row-s", type=float, default=0.5, help="leave rows under this out of the markdown")
    parser.add_argument("--work", type=Path, default=None, help="run folders here (default: a temp dir, removed)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="profile_default", help="result file stem")
    parser.add_argument("--baseline-run-dir", type=Path, default=None,
                        help="a finished default run of the code to compare with (e.g. main's `eosfed run`, same "
                             "seeds): its phases and quality numbers are stored as `baseline`")
    parser.add_argument("--baseline-note", default="", help="what the baseline run is (commit, wall time, load)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    overrides = shlex.split(args.overrides)
    import flwr
    import torch

    path = args.out / f"{args.name}.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    record["meta"] = {"cpus": os.cpu_count(), "torch": torch.__version__, "flwr": flwr.__version__,
                      "experiment": args.experiment, "overrides": overrides, "min_row_s": args.min_row_s,
                      "command": "python benchmarks/profile_default.py " + shlex.join(argv if argv is not None
                                                                                      else sys.argv[1:]),
                      "date": datetime.now().isoformat(timespec="seconds")}
    tmp = tempfile.TemporaryDirectory(prefix="profile-default-") if args.work is None else None
    work = Path(tmp.name) if tmp else args.work
    work.mkdir(parents=True, exist_ok=True)
    if args.baseline_run_dir is not None:
        record["baseline"] = {"source": args.baseline_note or str(args.baseline_run_dir),
                              "phases": {n: p["seconds"] for n, p in _phases(args.baseline_run_dir).items()},
                              "quality": _quality(args.baseline_run_dir)}
        atomic_write_text(path, json.dumps(record, indent=1))
        atomic_write_text(args.out / f"{args.name}.md", render(record))
    try:
        for way in [w for w in WAYS if w in args.ways]:
            log.info("profile: %s ...", way)
            if way == "imports":
                record["imports"] = way_imports()
            elif way == "in_process":
                record["in_process"], folded = way_in_process(args.experiment, overrides, work / "in-process",
                                                              args.interval_ms / 1000, args.nodes, args.threads)
                atomic_write_text(args.out / f"{args.name}.folded", folded)
            else:
                def save(runs: list[dict[str, Any]]) -> None:
                    record["flower"] = runs
                    atomic_write_text(path, json.dumps(record, indent=1))
                    atomic_write_text(args.out / f"{args.name}.md", render(record))

                way_flower(args.experiment, overrides, work / "flower", args.federation_config, args.warm,
                           args.flower_threads, save)
            atomic_write_text(path, json.dumps(record, indent=1))
            atomic_write_text(args.out / f"{args.name}.md", render(record))
    finally:
        if tmp:
            tmp.cleanup()
    return record


if __name__ == "__main__":
    main()
