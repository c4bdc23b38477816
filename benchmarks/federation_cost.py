"""What the federation costs: Flower's overhead, the simulation's memory, bytes per phase, scaling.

Sections (``--sections``, each stored under its own key of the JSON, so they can be rerun apart):

- ``overhead``: one experiment (default: the quick preset) through ``flwr run .`` (Flower's local
  simulation, its default 2 SuperNodes, a fresh isolated FLWR_HOME so the local SuperLink starts
  too) and through ``server.run.run_experiment`` on ``InProcessGrid`` (server/testing.py: the
  same ClientApp handlers called in this process, one after another; no Flower processes, no
  serialisation), ``--repeats`` times alternating. Total wall time, per-phase seconds
  (checkpoint.json) and the ratio of the medians. The difference is split into the part outside
  the phases (CLI, SuperLink and simulation start, FAB, ServerApp start, shutdown), the discover
  phase (nodes start: Ray actors, the ClientApp's first load) and the later phases (messages through
  the SuperLink, offset by the simulation's nodes computing at the same time); both ways again with
  ``stop_after=discover`` give the fixed cost per run.
- ``memory`` (measured during the ``overhead`` Flower run): the summed RSS and PSS of every process
  Flower started (the ``flwr`` CLI, the detached local SuperLink and its children: superexec,
  ServerApp, simulation, Ray workers), sampled every ``--sample-s`` seconds; peaks per phase window,
  and the per-phase node and coordinator peaks the phases record in ``traffic``. PSS splits shared
  pages (torch's libraries in each Ray worker) between processes, so its sum is the real footprint;
  the RSS sum counts them once per process.
- ``bytes``: message bytes per phase, ``enrol.weights=send`` (the ``overhead`` in-process run when both
  sections run) vs features-only ``enrol.weights=home``
  (in-process; the counts are those of the messages' records, the same through Flower).
- ``scaling``: N institutions (default 4, 8, 16): ``--scale-real`` (3) of them hold real samples of
  ``../shared/data`` (the EuroSAT halves, one FedAvg group; AID, 4 images per class), the others a
  generated world (small data: 32 px tiles, ``--scale-tiles`` scenes each, 1 round, 1 distillation
  epoch), sensors and tasks cycling through Sentinel-2 scene, Sentinel-1 scene, aerial land cover (so
  5 groups, 3 of them growing with N), four regions; through ``flwr run .`` with
  ``num-supernodes = min(N, --scale-nodes)``. Wall time, phase seconds, peak memory of the process
  tree, messages and bytes.
- ``default``: the default experiment through ``flwr run .``, ``--default-repeats`` times (cold cache: a
  fresh user's run); the evaluate phase's share of the wall time.

``targets`` (JSON and markdown) sets the measured figures against issue 24's goals (:func:`targets`): the
default ``eosfed run`` <= 180 s cold and <= 150 s warm with evaluate <= 15 % of it and no quality number
lower than the baseline's (read from ``benchmarks/results/profile_default.json``, written by
``benchmarks/profile_default.py``), the quick preset <= 60 s through Flower and <= 1.25 x its in-process time
(medians of the repeats), 128 institutions in <= 10 min and <= 6 GB (``scaling``), the suite <= 15 min and the
fast lane <= 4 min (``--suite-s``/``--fast-lane-s``, measured by ``.ci/run``), and an energy estimate
(:mod:`pipeline.energy`) for every phase. ``--sections`` with no name only recomputes the targets.

Synthetic worlds are generated before each measured run (``warmup_s``) into a shared cache; each run
gets its own cache folder linking to those worlds, so no run reuses another run's teacher features.
Everything runs with one torch thread (this process: ``torch.set_num_threads(1)``; Flower's
processes: ``OMP_NUM_THREADS=1``); Flower runs get ``eosfed run``'s federation config
(:func:`eosfed.commands.run.client_cpus`: the CPUs shared among the SuperNodes, so they work at once). Every Flower run is checked ``finished:completed`` with
``flwr ls`` and no process it started may outlive it.

Usage: python benchmarks/federation_cost.py [--sections overhead bytes scaling default]
       [--experiment quick] [--overrides "..."] [--scales 4 8 16] [--out benchmarks/results]
Writes <out>/federation_cost.json and federation_cost.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's code, whatever is installed

from clients.data import open_manifest  # noqa: E402
from eosfed.commands.run import client_cpus, federation_args
from clients.institution import InstitutionSpec
from geodata.files import atomic_write_text
from geodata.synth.spectra import CLASSES
from pipeline.proxy import proxy_manifest
from pipeline.settings import RunSettings, load_experiment
from server.local import descendants, flwr_run, isolated_flower, pids_mentioning, run_status
from server.testing import InProcessGrid
from server.phases.discover import simulated_record
from server.run import run_experiment

__all__ = ["main", "scale_overrides", "targets", "TreeSampler"]

log = logging.getLogger(__name__)
RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("scaling", "overhead", "bytes", "default")  # run in this order
PHASES = ("discover", "pretrain", "train", "enrol", "distill", "evaluate", "prune", "report")
# (sensor, task) of the generated institutions, in turn
SCALE_KINDS = (("sentinel2_l2a", "scene"), ("sentinel1_grd", "scene"), ("aerial_rgbn", "landcover"))
SCALE_REGIONS = ("r0", "r1", "r2", "r3")  # the default world's regions


# ---------------------------------------------------------------------------------------------
# Memory of a process tree


def _smaps_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of ``pid`` in MB from /proc/PID/smaps_rollup; (0, 0) when it is gone."""
    rss = pss = 0.0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return rss, pss


class TreeSampler:
    """Samples the summed RSS/PSS of ``roots()`` and all their descendants every ``interval_s``
    in a background thread: ``samples`` = [(unix time, rss MB, pss MB, processes)]."""

    def __init__(self, roots: Callable[[], set[int]], interval_s: float = 0.5) -> None:
        self.roots, self.interval_s = roots, interval_s
        self.samples: list[tuple[float, float, float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        pids = set()
        for root in self.roots():
            pids.add(root)
            pids.update(descendants(root))
        pids.discard(os.getpid())
        sizes = [_smaps_mb(p) for p in pids]
        self.samples.append((time.time(), sum(s[0] for s in sizes), sum(s[1] for s in sizes),
                             sum(1 for s in sizes if s[0] > 0)))

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "TreeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def peak(self, start: float = -math.inf, end: float = math.inf) -> dict[str, float]:
        """Peak RSS / PSS sums (MB) and most processes among the samples in [start, end]."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if not inside:
            return {}
        return {"rss_mb": round(max(s[1] for s in inside)), "pss_mb": round(max(s[2] for s in inside)),
                "processes": max(s[3] for s in inside), "samples": len(inside)}


# ---------------------------------------------------------------------------------------------
# Runs


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _phase_record(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Per finished phase: seconds, window (unix start, end) and traffic, from the run folder."""
    checkpoint = json.loads((run_dir / "checkpoint.json").read_text())
    phases = {}
    for name, entry in checkpoint["phases"].items():
        result = json.loads((run_dir / entry["result"]).read_text())
        traffic = result.get("traffic", {})
        start = datetime.fromisoformat(entry["started"]).timestamp()
        node_peaks = traffic.get("node_peak_mb") or {}
        phases[name] = {
            "status": entry["status"], "seconds": entry["seconds"], "window": [start, start + entry["seconds"] + 1],
            "sent": traffic.get("sent", 0), "received": traffic.get("received", 0),
            "messages": traffic.get("messages", 0),
            "node_peak_mb": round(max(node_peaks.values()), 1) if node_peaks else None,
            "coordinator_peak_mb": round(traffic.get("coordinator_peak_mb", 0.0), 1), "energy": result.get("energy")}
    return phases


def _totals(phases: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"phase_seconds": round(sum(p["seconds"] for p in phases.values()), 2),
            "messages": sum(p["messages"] for p in phases.values()),
            "sent": sum(p["sent"] for p in phases.values()),
            "received": sum(p["received"] for p in phases.values())}


def _run_cache(root: Path, worlds: Path) -> Path:
    """A run's own cache folder whose ``worlds`` are the shared, already generated ones."""
    cache = root / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "worlds").symlink_to(worlds, target_is_directory=True)
    return cache


def _overrides(cache: Path, out: Path, extra: Sequence[str]) -> list[str]:
    return [f"output_dir={out}", f"cache_dir={cache}", *extra]


def warm_worlds(experiment: str, overrides: Sequence[str]) -> float:
    """Generate the experiment's institution worlds and proxy world into its ``cache_dir``; seconds taken."""
    t0 = time.perf_counter()
    cfg, _ = load_experiment(RunSettings(experiment, tuple(overrides), "warmup"))
    cache_dir = Path(cfg.cache_dir).expanduser().resolve()
    for name, inst in cfg.institutions.items():
        if inst.manifest:  # a real-sample institution: its manifest is written at the run's start
            continue
        record = simulated_record(cfg, name, cache_dir)
        open_manifest(InstitutionSpec.from_record(record, f"institution {name!r}"))
    proxy_manifest(cfg, cache_dir, sorted({inst.sensor for inst in cfg.institutions.values()}))
    return round(time.perf_counter() - t0, 1)


def _worlds_made(worlds: Path, before: set[str]) -> list[str]:
    return sorted({p.name for p in worlds.iterdir() if p.is_dir() and not p.name.startswith(".")} - before)


class _SelfSampler(TreeSampler):
    """:class:`TreeSampler` of this process alone (the in-process run's coordinator and nodes)."""

    def _sample(self) -> None:
        rss, pss = _smaps_mb(os.getpid())
        self.samples.append((time.time(), rss, pss, 1))


def run_in_process(experiment: str, overrides: Sequence[str], run_name: str, nodes: int,
                           interval_s: float) -> dict[str, Any]:
    """The run on :class:`InProcessGrid` with ``nodes`` simulated hosts; wall time, phases, this process's memory."""
    config = {"experiment": experiment, "overrides": shlex.join(overrides), "run-name": run_name}
    grid = InProcessGrid({100 + p: {"partition-id": p, "num-partitions": nodes} for p in range(nodes)})
    load = _load()
    with _SelfSampler(lambda: set(), interval_s) as sampler:
        t0 = time.perf_counter()
        run_dir = run_experiment(grid, config, flower_run_id=1)
        wall = time.perf_counter() - t0
    phases = _phase_record(run_dir)
    return {"wall_s": round(wall, 2), "phases": phases, **_totals(phases), "peak": sampler.peak(),
            "load_before": load, "load_after": _load(), "run_dir": str(run_dir)}


def run_flower(root: Path, experiment: str, overrides: Sequence[str], run_name: str, timeout_s: float,
               interval_s: float, num_supernodes: int | None = None) -> dict[str, Any]:
    """The run through ``flwr run .`` on a fresh isolated local SuperLink (simulation); checks it
    finished completed and that nothing it started survives; wall time, phases, memory."""
    config = {"experiment": experiment, "overrides": shlex.join(overrides), "run-name": run_name}
    given = [f"num-supernodes={num_supernodes}"] if num_supernodes else []
    federation = [*client_cpus(given), *given]  # as eosfed run passes them
    extra = federation_args(federation)
    root.mkdir(parents=True, exist_ok=True)
    flower_root = Path(tempfile.mkdtemp(prefix="fed-", dir=root))
    load = _load()
    with isolated_flower(flower_root) as env:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        marks = (str(flower_root), env["RAY_TMPDIR"])

        def roots() -> set[int]:
            return {*descendants(os.getpid()), *(p for m in marks for p in pids_mentioning(m))}

        with TreeSampler(roots, interval_s) as sampler:
            t0 = time.perf_counter()
            run_id, output = flwr_run(env, None, config, timeout_s=timeout_s, extra=extra)
            wall = time.perf_counter() - t0
        status = run_status(env, None, run_id)
    left = [p for m in marks for p in pids_mentioning(m)]
    if status != "finished:completed":
        raise RuntimeError(f"flwr run {run_id} ({run_name}) is {status}:\n{output[-4000:]}")
    if left:
        raise RuntimeError(f"processes {left} outlived flwr run {run_id} ({run_name})")
    run_dir = Path(next(o for o in overrides if o.startswith("output_dir=")).split("=", 1)[1]) / run_name
    phases = _phase_record(run_dir)
    for phase in phases.values():
        phase["tree_peak"] = sampler.peak(*phase["window"])
    return {"wall_s": round(wall, 2), "run_id": run_id, "status": status, "phases": phases, **_totals(phases),
            "peak": sampler.peak(), "num_supernodes": num_supernodes or 2, "federation_config": federation,
            "load_before": load,
            "load_after": _load(), "run_dir": str(run_dir)}


def _strip(run: dict[str, Any]) -> dict[str, Any]:
    """A run record for the JSON: no absolute temp paths, no phase windows."""
    out = {k: v for k, v in run.items() if k != "run_dir"}
    out["phases"] = {n: {k: v for k, v in p.items() if k != "window"} for n, p in run["phases"].items()}
    return out


# ---------------------------------------------------------------------------------------------
# Sections


@contextmanager
def _workspace(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="fedcost-") as tmp:
        yield Path(tmp)


def _decompose(inproc: dict[str, Any], flower: dict[str, Any]) -> dict[str, Any]:
    """Where Flower's extra seconds go: outside the phases, in discover (nodes starting: Ray actors,
    the ClientApp's first load), and in the later phases (messages through the SuperLink against
    the simulation computing on several nodes at once, where the in-process grid goes one by one)."""
    later = [n for n in PHASES[1:] if n in inproc["phases"] and n in flower["phases"]]
    extra = sum(flower["phases"][n]["seconds"] - inproc["phases"][n]["seconds"] for n in later)
    messages = sum(flower["phases"][n]["messages"] for n in later)
    return {
        "outside_phases_s": round((flower["wall_s"] - flower["phase_seconds"])
                                  - (inproc["wall_s"] - inproc["phase_seconds"]), 1),
        "discover_s": round(flower["phases"]["discover"]["seconds"] - inproc["phases"]["discover"]["seconds"], 1),
        "later_phases_s": round(extra, 1), "later_messages": messages,
        "later_mb": round(sum(flower["phases"][n]["sent"] + flower["phases"][n]["received"] for n in later) / 1e6, 1),
        "later_s_per_message": round(extra / messages, 3) if messages else None}


def section_overhead(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The experiment both ways, ``--repeats`` times (alternating), and both ways with ``stop_after=discover``."""
    worlds = work / "worlds-cache"
    base = [*shlex.split(args.overrides)]
    warm = warm_worlds(args.experiment, [f"cache_dir={worlds}", *base])
    before = {p.name for p in (worlds / "worlds").iterdir()}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {"discover_only": {}, "full": {}}
    plan = [("discover_only", ["stop_after=discover"], 0)] + [("full", [], r) for r in range(args.repeats)]
    for label, stop, repeat in plan:
        for way in ("in_process", "flower"):
            root = work / f"overhead-{label}-{repeat}-{way}"
            cache = _run_cache(root, worlds / "worlds")
            overrides = _overrides(cache, root / "outputs", [*base, *stop])
            log.info("overhead %s #%d %s ...", label, repeat, way)
            if way == "flower":
                run = run_flower(root, args.experiment, overrides, "run", args.timeout_s, args.sample_s)
            else:
                run = run_in_process(args.experiment, overrides, "run", 2, args.sample_s)
            log.info("overhead %s #%d %s: %.1f s", label, repeat, way, run["wall_s"])
            runs[label].setdefault(way, []).append(run)
    full, disc = runs["full"], {way: r[0] for way, r in runs["discover_only"].items()}
    walls = {way: [r["wall_s"] for r in rs] for way, rs in full.items()}
    median = {way: float(np.median(w)) for way, w in walls.items()}
    return {
        "experiment": args.experiment, "overrides": base, "num_supernodes": 2, "warmup_s": warm,
        "worlds_generated_during_runs": _worlds_made(worlds / "worlds", before),
        "in_process": _strip(full["in_process"][0]), "flower": _strip(full["flower"][0]),
        "discover_only": {w: _strip(r) for w, r in disc.items()},
        "walls_s": walls, "median_wall_s": median,
        "ratio": round(median["flower"] / median["in_process"], 3),
        "extra_s": round(median["flower"] - median["in_process"], 1),
        "fixed_s_from_discover_only": round(disc["flower"]["wall_s"] - disc["in_process"]["wall_s"], 1),
        "decomposition": [_decompose(a, b) for a, b in zip(full["in_process"], full["flower"])],
    }


def section_bytes(args: argparse.Namespace, work: Path, overhead: dict[str, Any] | None = None) -> dict[str, Any]:
    """Both enrol modes in process; the ``send`` run is ``overhead``'s in-process run when given (same config)."""
    worlds = work / "worlds-cache"
    base = [*shlex.split(args.overrides)]
    warm = warm_worlds(args.experiment, [f"cache_dir={worlds}", *base])
    modes = {"send": overhead["in_process"]} if overhead else {}
    for mode in [m for m in ("send", "home") if m not in modes]:
        root = work / f"bytes-{mode}"
        cache = _run_cache(root, worlds / "worlds")
        log.info("bytes enrol.weights=%s ...", mode)
        run = run_in_process(args.experiment, _overrides(cache, root / "outputs", [*base, f"enrol.weights={mode}"]),
                                     "run", 2, args.sample_s)
        modes[mode] = _strip(run)
    return {"experiment": args.experiment, "overrides": base, "warmup_s": warm, "modes": modes}


# Real-sample institutions (configs/institutions/real_samples.yaml) put among the generated ones: the EuroSAT
# halves (one FedAvg group of their own) and AID capped at SCALE_AID_PER_CLASS images per class.
SCALE_REAL = {
    "eurosat_a": '{sensor:sentinel2_l1c,task:scene,manifest:${samples.out}/eurosat/manifest.json,region:part0}',
    "eurosat_b": '{sensor:sentinel2_l1c,task:scene,manifest:${samples.out}/eurosat/manifest.json,region:part1}',
    "aid": '{sensor:rgb,task:scene,manifest:${samples.out}/aid/manifest.json,region:part0,resize:64}',
}
SCALE_AID_PER_CLASS = 4


def scale_overrides(n: int, tiles: int, real: int = 0) -> list[str]:
    """Hydra overrides for a world and an experiment of ``n`` institutions (see module doc): ``real`` of them
    (at most 3) hold real samples of ``../shared/data`` (:data:`SCALE_REAL`), the others are generated."""
    priors = "{" + ",".join(f"{c}:1.0" for c in CLASSES) + "}"
    world, insts = [], []
    real = min(real, len(SCALE_REAL), n - 1)
    extra = [f"+institutions.{name}={spec}" for name, spec in list(SCALE_REAL.items())[:real]]
    if real:
        extra += ["samples.root=../shared/data", f"samples.aid_per_class={SCALE_AID_PER_CLASS}"]
    for i in range(n - real):
        sensor, task = SCALE_KINDS[i % len(SCALE_KINDS)]
        name = f"inst{i:02d}"
        world.append(f"{{name:{name},region:{SCALE_REGIONS[i % len(SCALE_REGIONS)]},sensors:[{sensor}],"
                     f"class_priors:{priors},domain_shift:{0.2 + 0.6 * i / max(n - 1, 1):.2f}}}")
        insts.append(f"+institutions.{name}={{sensor:{sensor},task:{task}}}")
    return [f"world.name=scale{n}", f"world.tiles_per_institution={tiles}", "world.tile_size=32",
            "world.aerial_factor=2", f"world.institutions=[{','.join(world)}]", "~institutions", *insts, *extra]


def section_scaling(args: argparse.Namespace, work: Path,
                    save: Callable[[dict[str, Any]], None] = lambda section: None) -> dict[str, Any]:
    """One ``flwr run .`` per institution count; ``save(section)`` after each (a failed count is recorded)."""
    worlds = work / "worlds-cache"
    small = shlex.split(args.scale_overrides)
    kept = args.previous_scaling if args.scale_append else {}  # earlier counts' rows, kept beside the new ones
    rows: list[dict[str, Any]] = [r for r in kept.get("rows", []) if r["institutions"] not in args.scales]
    failures: list[dict[str, Any]] = [f for f in kept.get("failures", []) if f["institutions"] not in args.scales]
    for n in args.scales:
        base = [*scale_overrides(n, args.scale_tiles, args.scale_real), *small]
        warm = warm_worlds(args.experiment, [f"cache_dir={worlds}", *base])
        before = {p.name for p in (worlds / "worlds").iterdir()}
        root = work / f"scale-{n}"
        cache = _run_cache(root, worlds / "worlds")
        nodes = min(n, args.scale_nodes)
        log.info("scaling: %d institutions on %d simulated nodes ...", n, nodes)
        real = min(args.scale_real, len(SCALE_REAL), n - 1)
        t0 = time.perf_counter()
        try:
            run = run_flower(root, args.experiment, _overrides(cache, root / "outputs", base), "run", args.timeout_s,
                             args.sample_s, num_supernodes=nodes)
        except (RuntimeError, TimeoutError) as exc:  # where it breaks is a result too
            log.error("scaling %d failed: %s", n, str(exc).splitlines()[0])
            failures.append({"institutions": n, "real_institutions": real, "num_supernodes": nodes,
                             "after_s": round(time.perf_counter() - t0, 1), "error": str(exc)[-3000:]})
        else:
            roster = json.loads((Path(run["run_dir"]) / "phases" / "discover.json").read_text())
            log.info("scaling %d: %.1f s, peak PSS %s MB", n, run["wall_s"], run["peak"].get("pss_mb"))
            rows.append({"institutions": n, "real_institutions": real,
                         "groups": {g: len(v["members"]) for g, v in roster["groups"].items()},
                         "warmup_s": warm, "worlds_generated_during_run": _worlds_made(worlds / "worlds", before),
                         **_strip(run)})
        rows.sort(key=lambda row: row["institutions"])
        save({"experiment": args.experiment, "overrides": small, "tiles_per_institution": args.scale_tiles,
              "max_nodes": args.scale_nodes, "rows": rows, "failures": failures, "growth": _growth(rows)})
    return {"experiment": args.experiment, "overrides": small, "tiles_per_institution": args.scale_tiles,
            "max_nodes": args.scale_nodes, "rows": rows, "failures": failures, "growth": _growth(rows)}


def _growth(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Log-log slopes and linear per-institution slopes of wall time, phase seconds, memory and messages."""
    if len(rows) < 2:
        return {}
    n = np.log([r["institutions"] for r in rows])
    out = {}
    for key, values in (("wall_s", [r["wall_s"] for r in rows]), ("phase_seconds", [r["phase_seconds"] for r in rows]),
                        ("peak_pss_mb", [r["peak"]["pss_mb"] for r in rows]),
                        ("peak_rss_mb", [r["peak"]["rss_mb"] for r in rows]),
                        ("messages", [r["messages"] for r in rows])):
        out[f"{key}_loglog_slope"] = round(float(np.polyfit(n, np.log(values), 1)[0]), 2)
        out[f"{key}_per_institution"] = round(float(np.polyfit(np.exp(n), values, 1)[0]), 1)
    return out


def section_default(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The default experiment through ``flwr run .``, ``--default-repeats`` times, each with a cold cache."""
    runs = []
    for repeat in range(args.default_repeats):
        root = work / f"default-{repeat}"
        log.info("default experiment through flwr run (cold cache) #%d ...", repeat)
        run = run_flower(root, "default", [f"output_dir={root / 'outputs'}"], "run", args.default_timeout_s,
                         args.sample_s)
        log.info("default #%d: %.1f s", repeat, run["wall_s"])
        runs.append(_strip(run))
    walls = [r["wall_s"] for r in runs]
    shares = [r["phases"]["evaluate"]["seconds"] / r["wall_s"] for r in runs]
    return {"experiment": "default", "cache": "cold (worlds generated during the run)", **runs[0],
            "walls_s": walls, "median_wall_s": float(np.median(walls)),
            "evaluate_shares": [round(x, 3) for x in shares], "median_evaluate_share": round(float(np.median(shares)), 3)}


def _energy_present(runs: list[dict[str, Any]]) -> bool:
    """Every phase (but report, which records it after writing the report) of every run has an energy estimate."""
    return bool(runs) and all(_wh(p.get("energy") or {}) > 0 for r in runs for n, p in r["phases"].items()
                              if n != "report")


def _wh(energy: dict[str, Any]) -> float:
    """A phase's estimated watt-hours (:class:`pipeline.energy.Energy`; records older than it carry joules)."""
    return energy["wh"] if "wh" in energy else energy.get("joules", 0.0) / 3600


def _lower_scores(run: dict[str, dict[str, float]], baseline: dict[str, dict[str, float]]) -> list[str]:
    """``institution encoder method: value < baseline`` for every score of ``baseline`` that ``run`` has lower."""
    return [f"{inst} {key}: {run[inst][key]:.4f} < {value:.4f}" for inst, scores in baseline.items()
            for key, value in scores.items() if key in run.get(inst, {}) and run[inst][key] < value]


def report_means(quality: dict[str, dict[str, float]]) -> dict[str, float]:
    """The report's per-institution mean of each encoder (the linear probe, or the segmentation probe), 3 decimals."""
    scores: dict[str, list[float]] = {}
    for inst in quality.values():
        for key, value in inst.items():
            encoder, method = key.rsplit(" ", 1)
            if method in ("linear", "segmentation"):
                scores.setdefault(encoder, []).append(value)
    return {encoder: round(float(np.mean(v)), 3) for encoder, v in scores.items()}


def targets(record: dict[str, Any], profile: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Issue 24's goals against what was measured: the default run (cold, warm, evaluate share, quality) from
    ``profile`` (benchmarks/results/profile_default.json, its ``flower`` runs; else this file's ``default``
    section), the quick preset from ``overhead``, 128 institutions from ``scaling``, the suite and fast
    lane from ``suite``. Each note gives the load average the wall time was measured under."""
    out = []

    def add(target: str, value: Any, threshold: str, met: bool, note: str) -> None:
        out.append({"target": target, "value": value, "threshold": threshold, "met": bool(met), "note": note})

    flower = {r["attempt"]: r for r in (profile or {}).get("flower", [])}
    default, overhead = record.get("default"), record.get("overhead")
    if flower:
        src = f"profile_default.json {profile['meta']['date']}"
        cold = flower.get("cold")
        if cold:
            add("default eosfed run seconds, cold (fresh Flower home: SuperLink started, worlds generated)",
                cold["wall_s"], "<= 180", cold["wall_s"] <= 180, f"{src}; load before {cold['load_before']}")
        warm = flower.get("warm")
        if warm:
            add("default eosfed run seconds, warm (SuperLink of the same checkout reused)", warm["wall_s"], "<= 150",
                warm["wall_s"] <= 150, f"{src}; load before {warm['load_before']}")
        else:
            add("default eosfed run seconds, warm (SuperLink of the same checkout reused)", "not measured", "<= 150",
                False, "run `python benchmarks/profile_default.py --ways flower --warm` (the warm attempt of "
                       f"{src} was stopped to free the machine)")
        for attempt, run in flower.items():
            share = round(run["phases"]["evaluate"] / run["wall_s"], 3)
            add(f"evaluate share of the default run ({attempt})", share, "<= 0.15", share <= 0.15,
                f"evaluate {run['phases']['evaluate']:.0f} s of {run['wall_s']:.0f} s; load before {run['load_before']}")
        baseline = (profile or {}).get("baseline")
        if baseline and cold and baseline.get("quality"):
            lower = _lower_scores(cold["quality"], baseline["quality"])
            add("no quality number of the default report lower than main's (same seeds)", not lower,
                "none lower", not lower, ("; ".join(lower) or "every score equal or higher")
                + f" (baseline: {baseline['source']})")
        elif baseline and cold and baseline.get("means"):
            means = report_means(cold["quality"])
            lower = [f"{k} {means[k]:.3f} < {v:.3f}" for k, v in baseline["means"].items() if k in means and means[k] < v]
            add("no quality number of the default report lower than main's (same seeds; report means)", not lower,
                "none lower", not lower, f"this run {means} vs {baseline['means']} ({baseline['source']})"
                + (f"; lower: {'; '.join(lower)}" if lower else ""))
    elif default and "walls_s" in default:
        n = len(default["walls_s"])
        add("default run seconds (flwr run ., cold cache)", default["median_wall_s"], "<= 180",
            default["median_wall_s"] <= 180, f"median of {n}; load before {default['load_before']}")
        add("evaluate share of the default run", default["median_evaluate_share"], "<= 0.15",
            default["median_evaluate_share"] <= 0.15, f"median of {n}: evaluate phase seconds / wall")
    if overhead and overhead["experiment"] == "quick" and not overhead["overrides"]:
        quick = overhead["median_wall_s"]["flower"]
        loads = overhead["flower"]["load_before"]
        if "federation_config" not in overhead["flower"]:
            loads = f"{loads}; measured with Flower's 2 CPUs per ClientApp, before eosfed run's client resources; not rerun"
        add("quick preset seconds (flwr run .)", quick, "<= 60", quick <= 60,
            f"median of {len(overhead['walls_s']['flower'])}; load before {loads}")
        add("Flower overhead (quick through flwr run / in process)", overhead["ratio"], "<= 1.25",
            overhead["ratio"] <= 1.25, f"ratio of the medians of the wall times; load before {loads}")
    rows = {r["institutions"]: r for r in (record.get("scaling") or {}).get("rows", [])}
    big = rows.get(128)
    if big:
        add("128 institutions complete (flwr run ., Ray simulation)", big["wall_s"], "<= 600",
            big["status"] == "finished:completed" and big["wall_s"] <= 600,
            f"{big['status']}; {big['num_supernodes']} SuperNodes; load before {big['load_before']}")
        add("128 institutions: peak memory of all processes (PSS sum, MB)", big["peak"]["pss_mb"], "<= 6000",
            big["peak"]["pss_mb"] <= 6000, f"RSS sum {big['peak']['rss_mb']} MB over {big['peak']['processes']} processes")
    elif rows:
        most = max(rows)
        add("128 institutions complete (flwr run ., Ray simulation)", f"not run (largest: {most})", "<= 600", False,
            f"{most} institutions: {rows[most]['wall_s']:.0f} s, peak PSS {rows[most]['peak']['pss_mb']} MB")
    suite = record.get("suite")
    if suite:
        add("python -m pytest (the whole suite, .ci/run) seconds", suite["suite_s"], "<= 900", suite["suite_s"] <= 900,
            suite["source"])
        add("fast lane (-m 'not flower and not federation and not slow') seconds", suite["fast_lane_s"], "<= 240",
            suite["fast_lane_s"] <= 240, suite["source"])
    runs = [r for r in (default, overhead and overhead["flower"], overhead and overhead["in_process"]) if r]
    if runs:
        add("energy per phase present", _energy_present(runs), "every phase of every run", _energy_present(runs),
            "phases' energy estimate (pipeline.energy) in the run folders")
    return out


# ---------------------------------------------------------------------------------------------
# Report


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f}"


def _peak(run: dict[str, Any], key: str = "pss_mb") -> str:
    value = (run.get("peak") or {}).get(key)
    return "-" if value is None else f"{value:.0f}"


def _overhead_md(r: dict[str, Any]) -> list[str]:
    a, b = r["in_process"], r["flower"]
    lines = [f"## Flower overhead: experiment `{r['experiment']}` {' '.join(r['overrides'])}".rstrip(), "",
             f"`flwr run .` (local simulation, {r['num_supernodes']} SuperNodes, fresh local SuperLink) vs "
             "`run_experiment(InProcessGrid)` in one process; worlds generated beforehand "
             f"({r['warmup_s']:.0f} s), each run with its own teacher cache.", "",
             "| phase | in-process s | flwr s | extra s | messages | MB sent | MB received | tree peak PSS MB "
             "| node peak MB | coordinator peak MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in PHASES:
        p, q = a["phases"].get(name), b["phases"].get(name)
        if not p or not q:
            continue
        tree = (q.get("tree_peak") or {}).get("pss_mb", "-")
        lines.append(f"| {name} | {p['seconds']:.1f} | {q['seconds']:.1f} | {q['seconds'] - p['seconds']:+.1f} | "
                     f"{q['messages']} | {_mb(q['sent'])} | {_mb(q['received'])} | {tree} | "
                     f"{q['node_peak_mb'] if q['node_peak_mb'] is not None else '-'} | {q['coordinator_peak_mb']:.0f} |")
    lines += [f"| **total (wall)** | {a['wall_s']:.1f} | {b['wall_s']:.1f} | {b['wall_s'] - a['wall_s']:+.1f} | "
              f"{b['messages']} | {_mb(b['sent'])} | {_mb(b['received'])} | {_peak(b)} | | |", "",
              f"Wall times of {len(r['walls_s']['flower'])} alternating repeats: in-process {r['walls_s']['in_process']} s, "
              f"flwr {r['walls_s']['flower']} s (phase table: the first). Ratio of the medians flwr / in-process: "
              f"**{r['ratio']:.2f}x** ({r['extra_s']:+.0f} s). With `stop_after=discover` (start, connect, identify, "
              f"describe): flwr {r['discover_only']['flower']['wall_s']:.1f} s vs in-process "
              f"{r['discover_only']['in_process']['wall_s']:.1f} s, i.e. {r['fixed_s_from_discover_only']:.0f} s fixed "
              "cost per run.", "",
              "| repeat | extra s outside phases (CLI, SuperLink, FAB, ServerApp start, shutdown) | extra s in discover "
              "(nodes start, ClientApp first load) | extra s in later phases | their messages | their MB | "
              "extra s per later message |", "|---|---|---|---|---|---|---|"]
    for i, d in enumerate(r["decomposition"]):
        per = "-" if d["later_s_per_message"] is None else f"{d['later_s_per_message']:+.2f}"
        lines.append(f"| {i} | {d['outside_phases_s']:+.1f} | {d['discover_s']:+.1f} | {d['later_phases_s']:+.1f} | "
                     f"{d['later_messages']} | {d['later_mb']:.0f} | {per} |")
    lines += ["", f"Memory of the Flower run (all its processes, sampled every {r.get('sample_s', 0.5)} s): peak PSS "
              f"sum {_peak(b)} MB, peak RSS sum {_peak(b, 'rss_mb')} MB over up to {b['peak'].get('processes')} "
              f"processes; in-process run (this one process): peak RSS {_peak(a, 'rss_mb')} MB.", ""]
    return lines


def _bytes_md(r: dict[str, Any]) -> list[str]:
    send, home = r["modes"]["send"], r["modes"]["home"]
    lines = [f"## Bytes per phase: weights sent vs features-only (`enrol.weights=home`), experiment "
             f"`{r['experiment']}` (in-process, 2 nodes)", "",
             "| phase | send: messages | send: MB sent | send: MB received | home: messages | home: MB sent "
             "| home: MB received | home s / send s |", "|---|---|---|---|---|---|---|---|"]
    for name in PHASES:
        p, q = send["phases"].get(name), home["phases"].get(name)
        if not p or not q:
            continue
        lines.append(f"| {name} | {p['messages']} | {_mb(p['sent'])} | {_mb(p['received'])} | {q['messages']} | "
                     f"{_mb(q['sent'])} | {_mb(q['received'])} | {q['seconds']:.1f} / {p['seconds']:.1f} |")
    lines += [f"| **total** | {send['messages']} | {_mb(send['sent'])} | {_mb(send['received'])} | {home['messages']} "
              f"| {_mb(home['sent'])} | {_mb(home['received'])} | {home['wall_s']:.0f} / {send['wall_s']:.0f} |", ""]
    return lines


def _scaling_md(r: dict[str, Any]) -> list[str]:
    lines = [f"## Scaling: institutions through `flwr run .` ({r['tiles_per_institution']} generated scenes of 32 px "
             f"each, real-sample institutions among them, {' '.join(r['overrides'])}; num-supernodes = "
             f"min(N, {r['max_nodes']}), eosfed run's client CPUs){' (partial)' if r.get('partial') else ''}", "",
             "| institutions | real | SuperNodes | groups (members) | wall s | phase s | train s | distill s | evaluate s "
             "| messages | MB moved | peak PSS MB | peak RSS MB | processes | world generation s | load before |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        ph = row["phases"]
        groups = ", ".join(f"{g.split('-')[0]} {m}" for g, m in row["groups"].items())
        lines.append(f"| {row['institutions']} | {row.get('real_institutions', 0)} | {row['num_supernodes']} | {groups} | "
                     f"{row['wall_s']:.0f} | "
                     f"{row['phase_seconds']:.0f} | {ph['train']['seconds']:.0f} | {ph['distill']['seconds']:.0f} | "
                     f"{ph['evaluate']['seconds']:.0f} | {row['messages']} | {_mb(row['sent'] + row['received'])} | "
                     f"{_peak(row)} | {_peak(row, 'rss_mb')} | {row['peak'].get('processes')} | {row['warmup_s']:.0f} | "
                     f"{row['load_before'][0]} |")
    for fail in r.get("failures", []):
        reason = " ".join(fail["error"].split())[-300:]
        lines.append(f"| {fail['institutions']} | {fail['real_institutions']} | {fail['num_supernodes']} | failed after "
                     f"{fail['after_s']:.0f} s: {reason} |" + " |" * 11)
    g = r.get("growth") or {}
    if g:
        lines += ["", f"Growth (log-log slope against N; 1 = linear): wall {g['wall_s_loglog_slope']}, phase time "
                      f"{g['phase_seconds_loglog_slope']}, messages {g['messages_loglog_slope']}, peak PSS "
                      f"{g['peak_pss_mb_loglog_slope']}, peak RSS {g['peak_rss_mb_loglog_slope']}. Linear fit: "
                      f"{g['wall_s_per_institution']:+.1f} s wall and {g['peak_pss_mb_per_institution']:+.0f} MB peak "
                      f"PSS per added institution, on top of a fixed start-up (see the overhead section)."]
    return [*lines, ""]


def _default_md(r: dict[str, Any]) -> list[str]:
    phases = ", ".join(f"{n} {p['seconds']:.0f} s" for n, p in r["phases"].items())
    lines = ["## Default experiment through `flwr run .` (2 SuperNodes, cold cache)", "",
             *([f"**Superseded**: {r['superseded']}", ""] if r.get("superseded") else []),
             f"Wall times {r.get('walls_s', [r['wall_s']])} s (median {r.get('median_wall_s', r['wall_s']):.0f} s); "
             f"evaluate share {r.get('evaluate_shares', '-')}. "
             f"First run: phases {phases}. Peak PSS sum {_peak(r)} MB, peak RSS sum {_peak(r, 'rss_mb')} MB; "
             f"{r['messages']} messages, {_mb(r['sent'] + r['received'])} MB moved. Load average before/after: "
             f"{r['load_before']} / {r['load_after']}.", ""]
    energy = {n: p["energy"] for n, p in r["phases"].items() if p.get("energy")}
    if energy:
        lines += ["Estimated energy per phase of the first run (`pipeline.energy`; settings `energy.*`):", "",
                  "| phase | seconds | total Wh | gCO2e |", "|---|---|---|---|"]
        lines += [f"| {n} | {e['seconds']:.1f} | {_wh(e):.3f} | {e['co2e_g']:.3f} |" for n, e in energy.items()]
        lines.append("")
    return lines


def _targets_md(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["## Targets (issue 24)", "", "| target | value | threshold | met | note |", "|---|---|---|---|---|"]
    for t in rows:
        value = f"{t['value']:.3g}" if isinstance(t["value"], float) else t["value"]
        lines.append(f"| {t['target']} | {value} | {t['threshold']} | {'yes' if t['met'] else '**no**'} | {t['note']} |")
    return [*lines, ""]


def render(record: dict[str, Any]) -> str:
    meta = record["meta"]
    lines = ["# Federation cost: Flower overhead, memory, bytes per phase, scaling", "",
             f"{meta['machine']}, {meta['cpus']} CPUs shared with other work (load average recorded per run), "
             f"torch {meta['torch']}, flwr {meta['flwr']}, 1 torch thread everywhere.", ""]
    if record.get("targets"):
        lines += _targets_md(record["targets"])
    for key, fmt in (("overhead", _overhead_md), ("bytes", _bytes_md), ("scaling", _scaling_md),
                     ("default", _default_md)):
        if key in record:
            lines += fmt(record[key])
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="*", choices=SECTIONS, default=list(SECTIONS),
                        help="sections to (re)measure; none: only recompute the targets")
    parser.add_argument("--experiment", default="quick", help="configs/experiment/<name>.yaml of overhead, bytes, scaling")
    parser.add_argument("--overrides", default="", help="Hydra overrides of the overhead and bytes runs")
    parser.add_argument("--scales", type=int, nargs="+", default=[4, 8, 16], help="institution counts")
    parser.add_argument("--scale-tiles", type=int, default=16, help="scenes per institution in the scaling runs")
    parser.add_argument("--scale-nodes", type=int, default=4, help="at most this many simulated SuperNodes")
    parser.add_argument("--scale-append", action="store_true",
                        help="keep the stored scaling rows of other institution counts beside the new ones")
    parser.add_argument("--scale-real", type=int, default=3,
                        help="institutions of the scaling runs that hold real samples of ../shared/data (at most 3)")
    parser.add_argument("--scale-overrides", default=("train.rounds=1 train.local_epochs=1 distill.epochs=1 "
                                                      "proxy.tiles_per_institution=8 prune.permutations=10"),
                        help="Hydra overrides of the scaling runs (on top of the generated world)")
    parser.add_argument("--repeats", type=int, default=2, help="full overhead runs each way")
    parser.add_argument("--sample-s", type=float, default=0.5, help="memory sampling interval")
    parser.add_argument("--timeout-s", type=float, default=900, help="per flwr run")
    parser.add_argument("--default-timeout-s", type=float, default=1500, help="the default experiment's flwr run")
    parser.add_argument("--default-repeats", type=int, default=2, help="default experiment runs")
    parser.add_argument("--work", type=Path, default=None, help="keep run folders here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON and markdown results")
    parser.add_argument("--suite-s", type=float, default=None, help="the whole suite's seconds (measured elsewhere)")
    parser.add_argument("--fast-lane-s", type=float, default=None, help="the fast lane's seconds")
    parser.add_argument("--suite-source", default="", help="where the suite and fast-lane seconds come from")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(1)
    import flwr

    path = args.out / "federation_cost.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    record["meta"] = {"machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                      "cpus": os.cpu_count(), "torch": torch.__version__, "flwr": flwr.__version__,
                      "sample_s": args.sample_s}
    args.previous_scaling = record.get("scaling") or {}
    if args.suite_s is not None and args.fast_lane_s is not None:
        record["suite"] = {"suite_s": args.suite_s, "fast_lane_s": args.fast_lane_s, "source": args.suite_source}
    profile_path = args.out / "profile_default.json"
    profile = json.loads(profile_path.read_text()) if profile_path.is_file() else None
    def save_scaling(section: dict[str, Any]) -> None:
        record["scaling"] = {**section, "partial": True, "argv": list(argv) if argv is not None else sys.argv[1:]}
        record["targets"] = targets(record, profile)
        atomic_write_text(path, json.dumps(record, indent=1))
        atomic_write_text(args.out / "federation_cost.md", render(record))

    sections = {"overhead": section_overhead, "scaling": lambda a, w: section_scaling(a, w, save_scaling),
                "default": section_default,
                "bytes": lambda a, w: section_bytes(a, w, record["overhead"] if "overhead" in a.sections else None)}
    t_all = time.perf_counter()
    record["targets"] = targets(record, profile)
    atomic_write_text(path, json.dumps(record, indent=1))
    atomic_write_text(args.out / "federation_cost.md", render(record))
    with _workspace(args.work) as work:
        for name in [s for s in SECTIONS if s in args.sections]:
            t0 = time.perf_counter()
            record[name] = {**sections[name](args, work), "sample_s": args.sample_s,
                            "section_s": round(time.perf_counter() - t0, 1),
                            "argv": list(argv) if argv is not None else sys.argv[1:]}
            record["targets"] = targets(record, profile)
            atomic_write_text(path, json.dumps(record, indent=1))
            atomic_write_text(args.out / "federation_cost.md", render(record))
            log.info("section %s done in %.0f s", name, record[name]["section_s"])
    log.info("federation_cost: %.0f s", time.perf_counter() - t_all)
    return record


if __name__ == "__main__":
    main()
