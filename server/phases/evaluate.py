"""Phase *evaluate*: every institution probes the student, and the ensemble where the coordinator holds
the weights, on its own labelled splits (``evaluate.fusion``); only scores come back.

Each institution gets the student's safetensors and card, plus the registry specialists that can
read its sensor (views at ``tolerance_nm``) with their proxy feature statistics. Replies
are checked (a list of probe results with finite scores in [0, 1]); a failed or malformed one is
reported and left out, and fewer valid replies than ``evaluate.min_replies`` fail the phase.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fusion.registry import Registry
from fusion.views import plan_view
from geodata.sensors import get_sensor
from server.messaging import Outcome, Request, read_config
from server.phases.base import Phase, PhaseContext
from pipeline.roster import Member
from specialists.io import bytes_tensor

__all__ = ["PHASE", "evaluate"]

log = logging.getLogger(__name__)


def _ensemble_records(ctx: PhaseContext, registry: Registry, member: Member) -> tuple[dict, dict] | str:
    """The ensemble part of the request for ``member``, or why there is none."""
    bands = get_sensor(member.sensor).bands
    tolerance = ctx.cfg.tolerance_nm
    readers = [e for e in registry.entries if plan_view(e.name, e.bands, bands, tolerance).applicable]
    local = [e for e in readers if not e.holder]
    if not readers:
        return f"no specialist can read {member.sensor}"
    if not local:
        return "the weights of every specialist that can read it stay home"
    cards, arrays = {}, {}
    for entry in local:
        folder = registry.root / entry.path
        cards[entry.name] = (folder / "card.json").read_text()
        arrays[f"{entry.name}/weights"] = bytes_tensor((folder / "weights.safetensors").read_bytes())
        stats = registry.feature_stats(entry.name)
        if stats is not None:
            arrays.update({f"{entry.name}/stats/{k}": v for k, v in stats.to_tensors().items()})
    return {"cards": json.dumps(cards), "tolerance_nm": tolerance}, arrays


def _results(outcome: Outcome, source: str) -> list[dict[str, Any]]:
    if not outcome.ok:
        raise ValueError(f"{source}: {outcome.error}")
    try:
        results = json.loads(read_config(outcome.content, "results", source).get("json", ""))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source}: 'results' is not JSON: {exc}") from None
    if not isinstance(results, list) or not results:
        raise ValueError(f"{source}: 'results' must be a non-empty list")
    for r in results:
        if not isinstance(r, dict) or not {"encoder", "method", "fraction", "mean", "metric"} <= set(r):
            raise ValueError(f"{source}: malformed probe result {r!r}")
        if not (isinstance(r["mean"], (int, float)) and math.isfinite(r["mean"]) and 0.0 <= r["mean"] <= 1.0):
            raise ValueError(f"{source}: probe score {r['mean']!r} is not a finite number in [0, 1]")
    return results


def evaluate(ctx: PhaseContext) -> dict[str, Any]:
    roster = ctx.require_roster()
    registry = Registry(ctx.registry_dir)
    ec = ctx.cfg.evaluate
    student = ctx.run_dir / "student"
    probe = {"fractions": json.dumps(list(ec.fractions)), "seeds": json.dumps(list(ec.seeds)),
             "batch_size": ec.batch_size, "device": ctx.cfg.train.device}
    student_card = ConfigRecord({"card": (student / "card.json").read_text()})
    student_weights = ArrayRecord({"weights": bytes_tensor((student / "weights.safetensors").read_bytes())})
    ensembles: dict[str, tuple[ConfigRecord, ArrayRecord] | str] = {}  # per sensor: built once, shared by requests
    requests, no_ensemble = [], {}
    for name, member in roster.institutions.items():
        content = RecordDict({"institution": ConfigRecord(member.record), "probe": ConfigRecord(probe),
                              "student": student_card, "student_weights": student_weights})
        if member.sensor not in ensembles:
            built = _ensemble_records(ctx, registry, member)
            ensembles[member.sensor] = built if isinstance(built, str) else (ConfigRecord(built[0]),
                                                                             ArrayRecord(built[1]))
        ensemble = ensembles[member.sensor]
        if isinstance(ensemble, str):
            no_ensemble[name] = ensemble
        else:
            content["ensemble"], content["ensemble_weights"] = ensemble
        requests.append(Request(name, member.node_id, content))
    institutions, failures = {}, []
    for name, outcome in ctx.exchange("evaluate.fusion", requests).items():
        source = f"evaluation at institution {name!r}"
        try:
            results = _results(outcome, source)
        except ValueError as exc:
            log.warning("Left out %s", exc)
            failures.append({"phase": "evaluate", "institution": name, "reason": str(exc)})
            continue
        metrics = dict(outcome.content.metric_records.get("metrics", {}))
        ctx.note_memory(name, metrics)
        member = roster.institutions[name]
        institutions[name] = {"sensor": member.sensor, "task": member.task, "results": results}
        best = {r["encoder"]: r["mean"] for r in results if r["fraction"] == max(ec.fractions)}
        log.info("Institution %s: %s", name, ", ".join(f"{k} {v:.4f}" for k, v in best.items()))
    for name, why in no_ensemble.items():
        log.info("Institution %s: ensemble not evaluated (%s)", name, why)
    if len(institutions) < ec.min_replies:
        raise RuntimeError(f"{len(institutions)} institution(s) returned valid evaluations, evaluate.min_replies "
                           f"is {ec.min_replies}; failures: {failures}")
    return {"institutions": institutions, "ensemble_not_evaluated": no_ensemble, "failures": failures}


PHASE = Phase("evaluate", evaluate)
