"""Phase *report*: ``report.md`` (per-phase tables, PNG plots under ``plots/``) and ``report.json``.

Rebuilt from the checkpointed phase results on every run, so it always shows what the run folder
holds; phases that did not run are listed as such.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fusion.baselines import BAND_STATS, RANDOM_INIT
from fusion.plots import save_plot
from geodata.files import atomic_write_text
from server.phases.base import Phase, PhaseContext

__all__ = ["HEADLINE", "PHASE", "headline_probes", "report"]

log = logging.getLogger(__name__)


def _mb(n: float) -> str:
    return f"{n / 2**20:.2f}"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _figure(path: Path, draw) -> str:
    """Write the plot and give its link relative to the run folder."""
    return f"plots/{save_plot(path, draw).name}"


def _phases(ctx: PhaseContext, results: dict[str, dict]) -> list[str]:
    rows = []
    for name in ctx.phase_order:
        entry = ctx.checkpoint.state["phases"].get(name)
        if name == PHASE.name:
            continue
        if entry is None:
            rows.append([name, "not run", "", "", "", "", ""])
            continue
        t = results[name].get("traffic", {})
        nodes = t.get("node_peak_mb") or {}
        rows.append([name, f"{entry['seconds']:.1f}", t.get("messages", 0), _mb(t.get("sent", 0)),
                     _mb(t.get("received", 0)), f"{t.get('coordinator_peak_mb', 0):.0f}",
                     f"{max(nodes.values()):.0f}" if nodes else "-"])
    return ["## Phases", ""] + _table(["phase", "seconds", "messages", "MB sent", "MB received",
                                       "coordinator peak MB (so far)", "node peak MB"], rows)


def _energy(results: dict[str, dict]) -> tuple[list[str], dict[str, Any]]:
    """The energy table (phases that recorded a measurement) and report.json's ``energy`` entry."""
    per_phase = {n: r["energy"] for n, r in results.items() if r.get("energy")}
    methods = list(dict.fromkeys(v.get("method", "unrecorded") for v in per_phase.values()))
    rows = [[n, f"{v['seconds']:.0f}", f"{v['cpu_wh']:.3f}", f"{v['memory_wh']:.3f}", f"{v['wh']:.3f}",
             f"{v['co2e_g']:.3f}"] for n, v in per_phase.items()]
    total = {k: sum(v[k] for v in per_phase.values()) for k in ("seconds", "wh", "co2e_g")}
    rows.append(["**total**", f"{total['seconds']:.0f}", "", "", f"{total['wh']:.3f}", f"{total['co2e_g']:.3f}"])
    lines = ["## Energy and carbon", "", f"Method: {'; then '.join(methods)}. Machine-wide: in the simulation it "
             "counts the coordinator and every simulated node on this machine (and any other work on it); in a real "
             "deployment it measures the coordinator's machine only.", ""] + _table(
        ["phase", "s", "CPU Wh", "memory Wh", "total Wh", "gCO2e"], rows)
    return lines, {"method": methods, "scope": "machine-wide, the coordinator's machine", "phases": per_phase,
                   "total": {k: round(v, 6) for k, v in total.items()}}


def _discover(result: dict) -> list[str]:
    rows = [[m["name"], m["node_id"], m["sensor"], m["task"], json.dumps(m["summary"]["tiles"])]
            for m in result["institutions"].values()]
    lines = ["## Institutions and groups", ""] + _table(["institution", "node", "sensor", "task", "tiles"], rows)
    lines += _table(["group", "sensor", "task", "members"],
                    [[g["name"], g["sensor"], g["task"], ", ".join(g["members"])] for g in result["groups"].values()])
    return lines


def _privacy(dp: dict | None) -> str:
    """A group's ``train.dp`` and the epsilon it spent, in one cell."""
    if not dp:
        return "off"
    return (f"clip {dp['clipping_norm']:g}, noise {dp['noise_multiplier']:g}, epsilon {dp['epsilon']:.3g} at delta "
            f"{dp['delta']:g}, {dp['mode']}-side clipping ({dp['rounds']} noised rounds)")


def _pretrain(result: dict) -> list[str]:
    if result.get("skipped"):
        return []
    rows = [[group, r["rounds_applied"] if r.get("file") else 0,
             " -> ".join(f"{sum(m['loss'] for m in h['institutions'].values()) / len(h['institutions']):.4f}"
                         for h in r["history"] if h["institutions"]) or "-",
             r["sha256"][:12] if r.get("file") else "none (train starts without it)"]
            for group, r in result["groups"].items()]
    return ["## Pretrain (federated FCMAE per group)", ""] + _table(
        ["group", "rounds applied", "members' mean masked-patch loss per round", "encoder sha256"], rows)


def _train(ctx: PhaseContext, result: dict) -> list[str]:
    rows, curves = [], {}
    for group, r in result["groups"].items():
        if r.get("integrated_from"):
            rows.append([group, ", ".join(r["members"]), f"from run {r['integrated_from']}", "", "", ""])
            continue
        metrics = r.get("metrics", {})
        tests = {k: v for k, v in metrics.items() if k.startswith("test_") and not k.endswith("_count")}
        rows.append([group, ", ".join(r["members"]), r.get("rounds_applied", 0),
                     ", ".join(f"{k} {v:.4f}" for k, v in tests.items()) or "-", ", ".join(r.get("kept_by", [])),
                     _privacy(r.get("dp"))])
        for record in r.get("history", []):
            val = {k: v for k, v in record.get("received", {}).items() if k.startswith("val_") and "loss" not in k}
            if val:
                key = sorted(val)[0]
                curves.setdefault(f"{group} ({key})", []).append((record["round"], val[key]))
    lines = ["## Train (FedAvg per group)", ""] + _table(
        ["group", "members", "rounds applied", "final test metrics", "kept by", "differential privacy"], rows)
    if curves:
        def draw(ax):
            for label, points in curves.items():
                ax.plot(*zip(*points), marker="o", label=label)
            ax.set_xlabel("round")
            ax.set_ylabel("validation metric of the received model")
            ax.legend(fontsize="small")
        lines += [f"![train rounds]({_figure(ctx.run_dir / 'plots' / 'train_rounds.png', draw)})", ""]
    return lines


def _enrol(result: dict) -> list[str]:
    rows = [[n, e["holder"], e["weights_sha256"][:12], _mb(e["weights_bytes"])] for n, e in result["enrolled"].items()]
    rows += [[n, "carried from run " + str(result["carried_from"]), "", ""] for n in result.get("carried", [])]
    head = [f"## Enrol (weights: {result['mode']})", ""]
    if result.get("not_enrolled"):
        head += [f"Not enrolled: {', '.join(result['not_enrolled'])}", ""]
    return head + _table(["specialist", "from", "sha256", "MB uploaded"], rows)


def _distill(result: dict) -> list[str]:
    h = result["history"]
    rows = [[t, f"{v[-1]:.4f}" if v else "-", "remote" if t in result["remote_teachers"] else "local"]
            for t, v in h["teachers"].items()]
    return [f"## Distill ({len(h['total'])} epochs on {result['proxy_tiles']} proxy tiles"
            + (f", warm-started from run {result['warm_start']}" if result.get("warm_start") else "") + ")", "",
            f"Final loss {h['total'][-1]:.4f}; teacher feature extractions {h['teacher_extractions']}.", ""] + \
        _table(["teacher", "final loss", "features"], rows) + [f"![distillation loss]({result['plot']})", ""]


HEADLINE = ("student", "ensemble", RANDOM_INIT, BAND_STATS)


def headline_probes(result: dict) -> dict[str, tuple[float, dict[str, dict]]]:
    """Per institution of phase *evaluate*'s ``result``: its largest label fraction and, at it, the linear (or
    segmentation) probe of each encoder."""
    out = {}
    for inst, r in result["institutions"].items():
        most = max(p["fraction"] for p in r["results"])
        out[inst] = most, {p["encoder"]: p for p in r["results"]
                           if p["fraction"] == most and p["method"] in ("linear", "segmentation")}
    return out


def _headline(result: dict) -> list[str]:
    """Student, ensemble and both baselines per institution (linear or segmentation probe, most labels)."""
    rows, scores = [], {k: [] for k in HEADLINE}
    for inst, (most, best) in headline_probes(result).items():
        r = result["institutions"][inst]
        for k in HEADLINE:
            if k in best:
                scores[k].append(best[k]["mean"])
        rows.append([inst, r["sensor"], next(iter(best.values()))["metric"] if best else "-", f"{most:g}",
                     *[f"{best[k]['mean']:.4f}" if k in best else "-" for k in HEADLINE]])
    complete = [r for r in rows if "-" not in r[4:6]]
    ratio = (f"{sum(float(r[4]) for r in complete) / sum(float(r[5]) for r in complete):.3f}"
             if complete and sum(float(r[5]) for r in complete) > 0 else "-")
    rows.append(["**mean**", "", "", "", *[f"{sum(v) / len(v):.4f}" if v else "-" for v in scores.values()]])
    return _table(["institution", "sensor", "metric", "labels", *HEADLINE], rows) + [
        "", f"Student / ensemble over institutions with both: {ratio}. Baselines: {RANDOM_INIT} is an untrained "
        f"student of the same size, {BAND_STATS} a probe on per-band mean and std (for segmentation: the bands "
        "on the encoders' stride-4 grid), same probe and seeds. An institution's ensemble is the specialists it "
        "received (without `enrol.share_weights`: its own group's specialist only).", ""]


def _evaluate(ctx: PhaseContext, result: dict) -> list[str]:
    rows, bars = [], {}
    for inst, r in result["institutions"].items():
        for p in r["results"]:
            rows.append([inst, r["sensor"], p["encoder"], p["method"], f"{p['fraction']:g}", p["metric"],
                         f"{p['mean']:.4f} ± {p['std']:.4f}"])
            if p["method"] in ("linear", "segmentation") and p["fraction"] == 1.0:
                bars.setdefault(inst, {})[p["encoder"]] = p["mean"]
    lines = ["## Evaluate (probes at each institution, its labels)", ""] + _headline(result) + _table(
        ["institution", "sensor", "encoder", "probe", "labels", "metric", "score"], rows)
    for inst, why in result.get("ensemble_not_evaluated", {}).items():
        lines.append(f"- {inst}: ensemble not evaluated ({why})")
    sharing = result.get("weights_sharing")
    if sharing:
        lines.append(f"- Specialist weights sent ({sharing['policy']}): " + "; ".join(
            f"{inst}: {', '.join(names)}" for inst, names in sharing["sent"].items()))
    if bars:
        def draw(ax):
            encoders = sorted({e for v in bars.values() for e in v})
            width = 0.8 / len(encoders)
            for i, encoder in enumerate(encoders):
                ax.bar([j + i * width for j in range(len(bars))], [v.get(encoder, 0) for v in bars.values()],
                       width, label=encoder)
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(bars))], list(bars), fontsize="small")
            ax.set_ylabel("probe score (all labels)")
            ax.legend(fontsize="small")
        lines += ["", f"![evaluation]({_figure(ctx.run_dir / 'plots' / 'evaluate.png', draw)})", ""]
    return lines


def _prune(ctx: PhaseContext, result: dict) -> list[str]:
    body = (ctx.run_dir / result["report"]).read_text().split("\n", 1)[1] if result.get("report") else ""
    note = [f"Note: {result['note']}.", ""] if result.get("note") else []
    return ["## Prune", "", f"Kept {', '.join(result['kept'])}; dropped {', '.join(result['dropped']) or 'none'}.",
            ""] + note + body.splitlines() + [""] + _redistill(result.get("redistill"))


def _redistill(result: dict | None) -> list[str]:
    """Full vs pruned student: what each distillation read and cost, and the games' probe on each alone."""
    if not result:
        return []
    rows = [[side, len(r["teachers"]), r["teacher_extractions"],
             "-" if r["targets_read"] is None else r["targets_read"], r["epochs"], f"{r['seconds']:.1f}",
             f"{r['probe']:.4f}"]
            for side, r in (("full (`student/`)", result["full"]), ("pruned (`student_pruned/`)", result["pruned"]))]
    return ["### Pruned student", "", "Warm-started from the full student and distilled on the kept teachers' cached "
            "targets only. Teacher extractions: teacher runs here filling the cache (0: every target was cached or "
            "computed by its holder); "
            f"targets read: cached (teacher, tile) targets the epochs used; probe: {result['probe_task']} on the "
            "proxy's labelled tiles, as in the games above.", ""] + _table(
        ["student", "teachers", "teacher extractions", "targets read", "epochs", "epoch seconds", "probe"], rows)


def _failures(results: dict[str, dict]) -> tuple[list[str], list[dict]]:
    found = []
    discover = results.get("discover", {})
    for f in discover.get("failures", []):
        found.append({"phase": "discover", **f})
    for idle in discover.get("idle_nodes", []):
        found.append({"phase": "discover", "node_id": idle["node_id"], "reason": "idle: " + idle["reason"]})
    for name, r in results.items():
        if name != "discover":
            found += [{"phase": name, **f} for f in r.get("failures", [])]
    rows = [[f.get("phase"), f.get("institution") or f.get("node_id", ""), f.get("round", f.get("group", "")),
             str(f.get("reason", "")).replace("|", "/")] for f in found]
    lines = ["## Failures and left-out nodes", ""] + (_table(["phase", "institution / node", "round / group", "reason"],
                                                             rows) if rows else ["None.", ""])
    return lines, found


def report(ctx: PhaseContext) -> dict[str, Any]:
    results = {n: ctx.checkpoint.result(n) for n in ctx.phase_order if ctx.checkpoint.is_done(n) and n != PHASE.name}
    state = ctx.checkpoint.state
    lines = [f"# eosfed run {ctx.run_dir.name}", "",
             f"Experiment `{state['experiment']}`, Flower run(s) {state['flower_runs']}, enrol weights "
             f"`{ctx.cfg.enrol.weights}`" + (f", integrating run `{ctx.cfg.integrate}`" if ctx.cfg.integrate else "")
             + ".", ""]
    lines += _phases(ctx, results)
    energy_lines, energy = _energy(results)
    lines += energy_lines
    sections = {"discover": _discover, "pretrain": _pretrain, "enrol": _enrol, "distill": _distill}
    for name in ctx.phase_order:
        if name not in results:
            continue
        if name in sections:
            lines += sections[name](results[name])
        elif name == "train":
            lines += _train(ctx, results[name])
        elif name == "evaluate":
            lines += _evaluate(ctx, results[name])
        elif name == "prune":
            lines += _prune(ctx, results[name])
    failure_lines, failures = _failures(results)
    lines += failure_lines
    atomic_write_text(ctx.run_dir / "report.md", "\n".join(lines) + "\n")
    summary = {
        "run": ctx.run_dir.name, "experiment": state["experiment"], "flower_runs": state["flower_runs"],
        "phases": {n: {"seconds": state["phases"][n]["seconds"], "traffic": results[n].get("traffic"),
                       "energy": results[n].get("energy")} for n in results},
        "energy": energy,
        "groups": {g: {k: r.get(k) for k in ("metrics", "members", "weights_sha256", "integrated_from", "dp")}
                   for g, r in results.get("train", {}).get("groups", {}).items()},
        "registry": results.get("enrol", {}).get("specialists"),
        "evaluate": {i: r["results"] for i, r in results.get("evaluate", {}).get("institutions", {}).items()},
        "prune": {**{k: results["prune"][k] for k in ("kept", "dropped", "scores")},
                  "redistill": results["prune"].get("redistill")} if "prune" in results else None,
        "failures": failures,
    }
    atomic_write_text(ctx.run_dir / "report.json", json.dumps(summary, indent=1))
    log.info("Report: %s", ctx.run_dir / "report.md")
    return {"report": "report.md", "summary": "report.json"}


PHASE = Phase("report", report, always=True)
