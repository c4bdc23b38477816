"""Phase *discover*: who is out there, what data they hold, and which groups they form.

1. wait for ``federation.min_nodes`` nodes, then ask each who it is (``query.identify``): a
   declared institution (its ``--node-config``; it also summarises its data in the same reply),
   a simulated host (``partition-id`` of N), or unconfigured (left idle);
2. hand the experiment's simulated institutions to the simulated hosts in config order, institution
   i to the host i mod H (H hosts, ordered by partition-id); hosts beyond the institution count idle;
3. ask the hosts to open each simulated institution's data and summarise it (``query.describe``);
4. group institutions by sensor, bands and task.

A summary carries its sensor with every band fully described (checked at decode: known kinds, finite
wavelengths, sane GSD); the sensor must be the one the institution declares, and must not conflict with
a sensor or band of the same name already in the federation (the coordinator's own catalog, then the
summaries admitted before it): the admitted summaries make the run's federation catalog
(``ctx.catalog``), in which every later phase resolves band names, so a partner's new sensor needs no
sensor file at the coordinator. The summary's bands become the roster's ``Member.bands``; their declared
mean and std must be values the sensor's data type can hold;
the summary must make a valid specialist card on its own (known task type, finite band statistics
with positive spread), so no partner's summary can break a group's training;
and its band statistics must be plausible beside its group's others (``federation.stats_factor``):
in a group of three or more, a member far from the median is left out; two members that disagree
cannot outvote each other, so each trains alone. A declared name is bound to the node that this run
first admitted with it (the roster's ``bindings``, kept across resumes): another node declaring it
is refused by name, as are all the declarations of a name declared by several nodes before any
binding. A node that fails a step is recorded and left out; the run stops only when fewer than
``federation.min_institutions`` institutions remain. On resume this phase runs again (node ids are
per Flower run) and refuses groups that differ from those later phases were built on.
"""

from __future__ import annotations

import json
import math
import os
import logging
from pathlib import Path
from typing import Any, Callable

from geodata.sensors import Catalog
from pipeline.fedavg import group_card, implausible_norms
from pipeline.settings import ExperimentConfig
from server.messaging import Outcome, Request, wait_for_nodes
from server.phases.base import Phase, PhaseContext
from pipeline.roster import Group, Member, Roster, form_groups
from wire.messages import DataSummary, DescribeReply, DescribeRequest, IdentifyReply, IdentifyRequest
from geodata.errors import InputError

__all__ = ["PHASE", "discover", "simulated_record", "assign_hosts"]

log = logging.getLogger(__name__)


def simulated_record(cfg: ExperimentConfig, name: str, cache_dir: Path) -> dict[str, str]:
    """The institution record a simulated host gets for institution ``name`` of the experiment."""
    inst = cfg.institutions[name]
    record = {"institution": name, "sensor": inst.sensor, "task": inst.task}
    if inst.region:
        record["region"] = inst.region
    if inst.resize:
        record["resize"] = str(inst.resize)
    if cfg.sensor_files:
        record["sensors"] = os.pathsep.join(str(Path(p).expanduser().resolve()) for p in cfg.sensor_files)
    if inst.manifest:
        record["data-path"] = str(Path(inst.manifest).expanduser().resolve())
    else:
        record["world"] = json.dumps(cfg.world, sort_keys=True)
        record["cache-dir"] = str(cache_dir)
    return record


def assign_hosts(institutions: list[str], hosts: list[int]) -> dict[str, int]:
    """Institution i goes to ``hosts[i % len(hosts)]`` (hosts ordered by partition-id)."""
    return {name: hosts[i % len(hosts)] for i, name in enumerate(institutions)} if hosts else {}


def _identify(ctx: PhaseContext, roster: Roster) -> tuple[dict[int, IdentifyReply], list[tuple[int, int]]]:
    """Declared nodes' identify replies by node id, and simulated hosts as (partition-id, node id)."""
    fed = ctx.cfg.federation
    node_ids = wait_for_nodes(ctx.grid, fed.min_nodes, fed.node_wait_s)
    roster.num_nodes = len(node_ids)
    requests = [Request(str(n), n, IdentifyRequest(n).encode()) for n in node_ids]
    declared: dict[int, IdentifyReply] = {}
    hosts: list[tuple[int, int]] = []
    for outcome in ctx.exchange("query.identify", requests).values():
        node = outcome.node_id
        try:
            if not outcome.ok:
                raise InputError(outcome.error)
            reply = IdentifyReply.decode(outcome.content, f"node {node}")
        except ValueError as exc:
            roster.failures.append({"node_id": node, "institution": None, "step": "identify", "reason": str(exc)})
            continue
        if reply.kind == "declared":
            declared[node] = reply
        elif reply.kind == "simulated":
            hosts.append((reply.partition_id, node))
        else:
            roster.idle_nodes.append({"node_id": node, "reason": "declares no institution"})
    return declared, sorted(hosts)


def _described(outcome: Outcome, source: str) -> DataSummary:
    """The data summary of a describe reply; ``ValueError`` says what is wrong."""
    if not outcome.ok:
        raise InputError(outcome.error)
    return DescribeReply.decode(outcome.content, source).summary


def _check_summary(summary: DataSummary, name: str, sensor: str, source: str, federation: Catalog) -> Catalog:
    """The summary is ``name``'s, describes its declared ``sensor`` without conflicting with ``federation``
    (returned with it added), its bands are bands of that sensor, and their declared mean and std are values
    the sensor's data type can hold."""
    if summary.institution != name:
        raise InputError(f"{source}: reply is for institution {summary.institution!r}")
    if not summary.sensor:
        raise InputError(f"{source}: the summary does not describe its sensor (an older eosfed at the node?)")
    described = summary.catalog().sensor(summary.sensor["name"])
    if sensor not in (described.name, *described.aliases):
        raise InputError(f"{source}: the summary describes sensor {described.name!r}, the institution declares "
                         f"{sensor!r}")
    federation = federation.merge(summary.catalog(), source)
    own = described.bands
    foreign = [b for b in summary.bands if b not in own]
    if foreign:
        raise InputError(f"{source}: bands {foreign} are not bands of sensor {sensor!r} {list(own)}")
    ranges = described.physical_ranges()
    for band, mean, std in zip(summary.bands, summary.norm_mean, summary.norm_std):
        low, high = ranges[own.index(band)] if ranges else (-math.inf, math.inf)
        if not (low <= mean <= high and std <= (high - low) / 2):
            raise InputError(f"{source}: band {band}: declared mean {mean:.4g} and std {std:.4g} are beyond what "
                             f"sensor {sensor!r} can hold (values in [{low:.4g}, {high:.4g}], so std <= "
                             f"{(high - low) / 2:.4g})")
    return federation


def _check_card(member: Member, variant: str, source: str) -> None:
    """``member``'s summary makes a valid specialist card on its own (what its group's card pools)."""
    alone = Group(member.name, member.sensor, member.task, member.summary.task_type,
                  list(member.summary.classes), [member.name])
    try:
        group_card(alone, [member], variant, 1.0)
    except ValueError as exc:
        raise InputError(f"{source}: its data summary makes no valid specialist card: {exc}") from None


def _earlier_bindings(ctx: PhaseContext) -> dict[str, int]:
    """Declared institution name -> the node bound to it by this run's earlier discovery (none at first)."""
    if not ctx.checkpoint.is_done(PHASE.name):
        return {}
    return Roster.from_dict(ctx.checkpoint.result(PHASE.name)).bindings


def _squatting(name: str, node: int, bound: dict[str, int], declarers: list[int], simulated: bool) -> str | None:
    """Why ``node``'s declaration of ``name`` is refused (``None``: it is not): the name is a simulated
    institution's, bound to another node earlier in this run, or, bound to none yet, declared by
    several nodes at once (the coordinator cannot tell the owner)."""
    if simulated:
        return f"institution {name!r} is a simulated institution of the experiment"
    if name in bound:
        if bound[name] == node:
            return None
        return (f"institution {name!r} is bound to node {bound[name]}, which declared it first in this run; "
                f"node {node} may not declare it (pick another run-name if the partner's node changed)")
    if len(declarers) > 1:
        return (f"institution {name!r} is declared by nodes {sorted(declarers)} at once and bound to none yet; "
                f"the coordinator cannot tell its owner, so no declaration of it is taken")
    return None


def _poolable_groups(members: list[Member], factor: float, roster: Roster) -> dict[str, Group]:
    """The groups of ``members`` once band statistics are checked against the group's others
    (:func:`pipeline.fedavg.implausible_norms`): an implausible member of a group of three or more is
    removed from ``members``, the two of a disagreeing pair train apart; each is a roster failure."""
    by_name = {m.name: m for m in members}
    apart = set()
    for group in form_groups(members).values():
        for name, reason in implausible_norms([by_name[n] for n in group.members], factor).items():
            log.warning("Group %s: %s: %s", group.name, name, reason)
            roster.failures.append({"node_id": by_name[name].node_id, "institution": name, "step": "statistics",
                                    "reason": f"group {group.name}: {reason}"})
            if len(group.members) == 2:
                apart.add(name)
            else:
                members.remove(by_name[name])
    return form_groups(members, apart)


def discover(ctx: PhaseContext) -> dict[str, Any]:
    cfg = ctx.cfg
    roster = Roster()
    declared, hosts = _identify(ctx, roster)
    members: list[Member] = []

    def admit(name: str, node: int, record: dict[str, str], simulated: bool, step: str,
              summary: Callable[[str], DataSummary]) -> None:
        """Add ``name`` once its data summary (read naming the given source) passes the checks."""
        source = f"node {node}, institution {name!r}"
        try:
            reported = summary(source)
            federation = _check_summary(reported, name, record["sensor"], source, ctx.catalog)
            member = Member(name, record["sensor"], record["task"], node, simulated, record, reported,
                            list(reported.bands))
            _check_card(member, cfg.train.variant, source)
        except ValueError as exc:
            roster.failures.append({"node_id": node, "institution": name, "step": step, "reason": str(exc)})
            return
        members.append(member)
        ctx.catalog = federation

    # Declared institutions: the identify reply already holds their data summary.
    bound = _earlier_bindings(ctx)
    for node, reply in declared.items():
        name = reply.institution["institution"]
        declarers = [n for n, r in declared.items() if r.institution["institution"] == name]
        squatted = _squatting(name, node, bound, declarers, name in cfg.institutions)
        if squatted:
            log.warning("Refused node %d's declaration: %s", node, squatted)
            roster.failures.append({"node_id": node, "institution": name, "step": "identify", "reason": squatted})
            continue
        admit(name, node, reply.institution, False, "identify", lambda source, reply=reply: reply.summary)
    roster.bindings = {**bound, **{m.name: m.node_id for m in members}}

    # Simulated institutions: assigned to the simulated hosts, which prepare and summarise their data.
    host_nodes = [node for _, node in hosts]
    assignment = assign_hosts(list(cfg.institutions), host_nodes)
    for partition, node in hosts[len(cfg.institutions):]:
        roster.idle_nodes.append({"node_id": node, "reason": f"simulated partition {partition}: no institution left"})
    if cfg.institutions and not hosts:
        log.info("No simulated nodes joined; the experiment's %d simulated institutions are not used",
                 len(cfg.institutions))
    elif len(host_nodes) < len(cfg.institutions):
        log.info("%d simulated institutions on %d simulated nodes (each hosts several); "
                 "`--federation-config \"num-supernodes=%d\"` gives one node each",
                 len(cfg.institutions), len(host_nodes), len(cfg.institutions))
    records = {name: simulated_record(cfg, name, ctx.cache_dir) for name in assignment}
    requests = [Request(name, node, DescribeRequest(records[name]).encode()) for name, node in assignment.items()]
    for name, outcome in ctx.exchange("query.describe", requests).items():
        admit(name, outcome.node_id, records[name], True, "describe",
              lambda source, outcome=outcome: _described(outcome, source))

    roster.groups = _poolable_groups(members, cfg.federation.stats_factor, roster)
    roster.institutions = {m.name: m for m in sorted(members, key=lambda m: m.name)}
    _log_roster(roster)
    if len(members) < cfg.federation.min_institutions:
        reasons = "; ".join(f"{f['institution'] or 'node ' + str(f['node_id'])}: {f['reason']}" for f in roster.failures)
        raise RuntimeError(f"{len(members)} usable institution(s), federation.min_institutions is "
                           f"{cfg.federation.min_institutions}. Failures: {reasons or 'none'}")
    _check_resume(ctx, roster)
    ctx.roster = roster
    return roster.to_dict()


def _log_roster(roster: Roster) -> None:
    for m in roster.institutions.values():
        log.info("Institution %-14s node %-20d %-14s %-10s tiles %s%s", m.name, m.node_id, m.sensor, m.task,
                 m.summary.tiles, " (simulated)" if m.simulated else "")
    for g in roster.groups.values():
        log.info("Group %s: %s (%s, %d classes)", g.name, ", ".join(g.members), g.task_type, len(g.classes))
    for idle in roster.idle_nodes:
        log.info("Idle node %d: %s", idle["node_id"], idle["reason"])
    for f in roster.failures:
        log.warning("Left out %s (node %d) at %s: %s", f["institution"] or "node", f["node_id"], f["step"], f["reason"])


def _check_resume(ctx: PhaseContext, roster: Roster) -> None:
    """Refuse to resume later phases on different groups than they were built on."""
    later = ctx.checkpoint.done_after(PHASE.name, ctx.phase_order)
    if not later or not ctx.checkpoint.is_done(PHASE.name):
        return
    before = Roster.from_dict(ctx.checkpoint.result(PHASE.name)).signature()
    if before != roster.signature():
        raise RuntimeError(f"the groups changed since phases {later} finished: was {before}, now "
                           f"{roster.signature()}; pick another run-name to start a new run")


PHASE = Phase("discover", discover, always=True)
