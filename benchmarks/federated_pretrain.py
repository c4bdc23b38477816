"""Phase *pretrain* (federated FCMAE) vs none: the same experiment and seed run in process
(:class:`server.testing.InProcessGrid`, ``--nodes`` simulated hosts) once per ``--rounds`` value (0: no
pretraining), each in its own run folder beside shared world slices. Per run: wall and phase seconds, the
evaluate phase's headline means over institutions (student, ensemble, random-init, band-stats: the report's
table), each group's specialist test metrics and the pretrain phase's masked-patch loss per round.

``python benchmarks/federated_pretrain.py --out /tmp/fp --rounds 0 2`` writes ``--out``/federated_pretrain.json
(``--json`` elsewhere); the numbers of record are in ``benchmarks/results/pretrain.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from federation_cost import run_in_process, warm_worlds  # noqa: E402
from pipeline.logs import configure_logging  # noqa: E402
from server.phases.report import HEADLINE, headline_probes  # noqa: E402

log = logging.getLogger(__name__)


def summarise(run_dir: Path) -> dict[str, Any]:
    """The headline means, the specialists' test metrics and the pretraining losses of a finished run."""
    phases = run_dir / "phases"
    probes = headline_probes(json.loads((phases / "evaluate.json").read_text()))
    means = {k: sum(p[k]["mean"] for _, p in probes.values()) / len(probes) for k in HEADLINE
             if all(k in p for _, p in probes.values())}
    train = json.loads((phases / "train.json").read_text())["groups"]
    pretrain = json.loads((phases / "pretrain.json").read_text())["groups"]
    return {"means": means,
            "per_institution": {i: {k: p[k]["mean"] for k in HEADLINE if k in p} for i, (_, p) in probes.items()},
            "specialists": {g: {k: v for k, v in r.get("metrics", {}).items()
                                if k.startswith("test_") and not k.endswith("_count")} for g, r in train.items()},
            "pretrain_loss": {g: [sum(m["loss"] for m in h["institutions"].values()) / len(h["institutions"])
                                  for h in r["history"] if h["institutions"]] for g, r in pretrain.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="work folder (worlds, run folders)")
    parser.add_argument("--experiment", default="default")
    parser.add_argument("--rounds", type=int, nargs="+", default=[0, 2], help="pretrain.rounds of each run")
    parser.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides shared by every run")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--tag", default="", help="prefix of the run names (several invocations in one --out)")
    parser.add_argument("--json", type=Path, help="results file (default: OUT/federated_pretrain.json)")
    args = parser.parse_args()
    configure_logging()
    base = [f"output_dir={args.out}", f"cache_dir={args.out}/cache", *args.overrides]
    results: dict[str, Any] = {"experiment": args.experiment, "overrides": args.overrides,
                               "warmup_s": warm_worlds(args.experiment, base), "runs": {}}
    for rounds in args.rounds:
        name = f"{args.tag}pretrain{rounds}"
        run = run_in_process(args.experiment, [*base, f"pretrain.rounds={rounds}"], name, args.nodes, 2.0)
        results["runs"][name] = {**{k: run[k] for k in ("wall_s", "load_before", "load_after")},
                                 "phase_s": {n: p["seconds"] for n, p in run["phases"].items()},
                                 **summarise(Path(run["run_dir"]))}
        log.info("%s: %s", name, results["runs"][name]["means"])
        path = args.json or args.out / "federated_pretrain.json"
        path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
