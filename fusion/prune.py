"""Pruning: keep the specialists that earn their compute, as a new, smaller registry plus a report.

Rules (on Shapley contributions, usually :func:`fusion.contrib.combine_contributions` over tasks):
``keep_top_k`` keeps the ``k`` highest Shapley means; ``drop_nonpositive`` drops every specialist
whose interval lies at or below zero (``ci_high <= 0``; with random-twin baselines, no better than its
untrained twin: :mod:`fusion.contrib`). Both may be given. Registry members without
a score (no evaluated task could use them) are kept and listed as unscored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from fusion.contrib import BASELINE_TWIN, Contribution
from fusion.registry import Registry
from geodata.files import atomic_write_text
from geodata.errors import InputError

__all__ = ["prune", "select_kept", "REPORT_JSON", "REPORT_MD"]

log = logging.getLogger(__name__)

REPORT_JSON = "prune_report.json"
REPORT_MD = "prune_report.md"


def nonpositive_reason(c: Contribution) -> str | None:
    """Why the drop-nonpositive rule drops ``c`` (its Shapley interval lies at or below zero), else None."""
    if c.ci_high > 0:
        return None
    against = " (against its random twin)" if c.baseline == BASELINE_TWIN else ""
    return f"Shapley interval [{c.ci_low:.4f}, {c.ci_high:.4f}]{against} lies at or below zero"


def select_kept(names: Sequence[str], scores: Sequence[Contribution], keep_top_k: int | None = None,
                drop_nonpositive: bool = False) -> tuple[list[str], dict[str, str]]:
    """Names kept (registry order) and, for each dropped one, why."""
    if keep_top_k is None and not drop_nonpositive:
        raise InputError("give keep_top_k, drop_nonpositive, or both")
    if keep_top_k is not None and keep_top_k < 1:
        raise InputError(f"keep_top_k must be at least 1, got {keep_top_k}")
    by_name = {c.name: c for c in scores}
    unknown = sorted(set(by_name) - set(names))
    if unknown:
        raise InputError(f"scores name specialists {unknown} that the registry does not hold ({list(names)})")
    dropped: dict[str, str] = {}
    if drop_nonpositive:
        dropped.update((c.name, reason) for c in scores if (reason := nonpositive_reason(c)))
    if keep_top_k is not None:
        ranked = sorted(scores, key=lambda c: c.shapley, reverse=True)
        for rank, c in enumerate(ranked, start=1):
            if rank > keep_top_k and c.name not in dropped:
                dropped[c.name] = f"rank {rank} by Shapley ({c.shapley:.4f}) is below the top {keep_top_k}"
    kept = [n for n in names if n not in dropped]
    if not kept:
        raise InputError("pruning would drop every specialist; nothing left to run")
    return kept, dropped


def _markdown(report: dict) -> str:
    lines = [f"# Pruning report: {report['source']} -> {report['output']}", "",
             f"Rule: {report['rule']}. Kept {len(report['kept'])} of {len(report['kept']) + len(report['dropped'])}.",
             "", f"Marginal contributions are taken against: {report['baseline']}.",
             "", "| specialist | Shapley | interval | leave-one-out | gate | tasks | decision |",
             "|---|---|---|---|---|---|---|"]
    for row in report["scores"]:
        gate = f"{row['gate']:.3f}" if row["gate"] is not None else "-"
        decision = f"dropped: {report['dropped'][row['name']]}" if row["name"] in report["dropped"] else "kept"
        lines.append(f"| {row['name']} | {row['shapley']:.4f} | [{row['ci_low']:.4f}, {row['ci_high']:.4f}] | "
                     f"{row['loo']:.4f} | {gate} | {', '.join(row['tasks'])} | {decision} |")
    for name in report["unscored"]:
        lines.append(f"| {name} | - | - | - | - | - | kept (unscored) |")
    if report.get("cka"):
        names = report["cka"]["names"]
        lines += ["", "Redundancy (linear CKA of pooled features):", "",
                  "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for name, row in zip(names, report["cka"]["matrix"]):
            lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    return "\n".join(lines) + "\n"


def prune(registry: Registry, scores: Sequence[Contribution], out_dir: str | Path, keep_top_k: int | None = None,
          drop_nonpositive: bool = False, cka: tuple[list[str], list[list[float]]] | None = None) -> Registry:
    """Write the kept specialists as a new registry at ``out_dir`` with ``prune_report.{json,md}``."""
    kept, dropped = select_kept(registry.names, scores, keep_top_k, drop_nonpositive)
    out = registry.subset(kept, out_dir)
    rules = ([f"keep top {keep_top_k} by Shapley"] if keep_top_k is not None else []) + \
        (["drop intervals at or below zero"] if drop_nonpositive else [])
    report = {
        "source": str(registry.root), "output": str(out.root), "rule": " and ".join(rules),
        "kept": kept, "dropped": dropped,
        "baseline": ", ".join(sorted({c.baseline for c in scores})) or "none",
        "unscored": [n for n in registry.names if n not in {c.name for c in scores}],
        "scores": [c.to_dict() for c in sorted(scores, key=lambda c: c.shapley, reverse=True)],
        "cka": {"names": cka[0], "matrix": [list(map(float, r)) for r in cka[1]]} if cka is not None else None,
    }
    atomic_write_text(out.root / REPORT_JSON, json.dumps(report, indent=1))
    atomic_write_text(out.root / REPORT_MD, _markdown(report))
    log.info("pruned %s -> %s: kept %s, dropped %s", registry.root, out.root, kept, sorted(dropped))
    return out
