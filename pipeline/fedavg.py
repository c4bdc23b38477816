"""A group's specialist trained by FedAvg, without Flower: the group's starting card (members' band
statistics pooled), the settings of each round, checked and screened updates aggregated, and the
sealed result. The caller moves the weights to the members and back.

Every number a member declares is its own claim, so none may take the group over. Updates the
coordinator cannot tell apart (closer to each other than :data:`SAME` times their step from the global
state) count as one member: one representative, one weight (the largest claim among them), one cap.
Each such member's weight (its declared train count) is capped at ``train.max_weight_share`` of the
total (the excess goes to the others), and with three or more of them an update farther from the
round's coordinate-wise median than ``train.update_factor`` times the median distance (at least the
median step, so that colluders agreeing with each other cannot refuse everyone else) is refused.
``train.aggregation`` picks the weighted mean (``fedavg``), the coordinate-wise ``median`` or the
``trimmed_mean`` (without each coordinate's lowest and highest value; three or more updates). With
``train.dp`` each update is clipped (by its member, the norm checked here, or here) and the weighted mean
noised (:mod:`pipeline.privacy`)."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from pipeline.privacy import add_noise, clip_update, epsilon, noise_stdv, update_norm
from pipeline.roster import Group, Member
from pipeline.settings import AGGREGATIONS, TrainSettings
from specialists.card import SpecialistCard
from specialists.heads import build_head
from specialists.init import RANDOM, load_encoder_weights
from specialists.artifact import state_bytes
from specialists.model import Specialist
from specialists.train import MONITOR, TrainConfig
from geodata.errors import InputError

__all__ = ["SAME", "GroupTraining", "State", "Update", "aggregate", "capped_shares", "check_state", "combine",
           "fedavg", "group_card", "implausible_norms", "indistinct", "join_states", "pool_norm", "round_config",
           "screen", "split_states", "weighted_metrics"]

log = logging.getLogger(__name__)

State = dict[str, torch.Tensor]
SAME = 0.01  # updates closer than this fraction of their step from the global state are one member's
BLOCK_VALUES = 1 << 22  # values (float64) of one working block of the screen and coordinate-wise aggregation
CLIP_SLACK = 1e-4  # a member's clipped update may exceed train.dp.clipping_norm by this fraction (float32 rounding)


def check_state(reference: State, update: State, source: str) -> State:
    """``update`` if it has exactly ``reference``'s keys, shapes and dtypes and finite values;
    otherwise ``ValueError`` naming ``source`` and the first offending tensor."""
    missing, extra = sorted(set(reference) - set(update)), sorted(set(update) - set(reference))
    if missing or extra:
        raise InputError(f"{source}: tensors missing {missing[:5]}, unexpected {extra[:5]}")
    for key, ref in reference.items():
        value = update[key]
        if value.shape != ref.shape or value.dtype != ref.dtype:
            raise InputError(f"{source}: tensor {key!r} is {value.dtype}{list(value.shape)}, "
                             f"expected {ref.dtype}{list(ref.shape)}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise InputError(f"{source}: tensor {key!r} has non-finite values")
    return update


def fedavg(states: Sequence[State], weights: Sequence[float]) -> State:
    """Weighted mean of floating tensors (others are taken from the first state)."""
    if not states or len(states) != len(weights) or sum(weights) <= 0:
        raise InputError(f"fedavg needs states with positive total weight, got {len(states)} / {list(weights)}")
    total = float(sum(weights))
    out: State = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            acc = torch.zeros_like(first, dtype=torch.float64)
            for state, weight in zip(states, weights):
                acc += state[key].to(torch.float64) * (weight / total)
            out[key] = acc.to(first.dtype)
        else:
            out[key] = first.clone()
    return out


def capped_shares(counts: Sequence[float], max_share: float) -> list[float]:
    """Shares proportional to ``counts``, none above ``max_share`` (at least ``1/len(counts)``): a capped
    share's excess goes to the others in proportion to their counts."""
    cap = max(max_share, 1.0 / len(counts))
    shares = [0.0] * len(counts)
    free, left = set(range(len(counts))), 1.0
    while True:
        total = float(sum(counts[i] for i in free))
        over = [i for i in free if counts[i] / total * left > cap]
        if not over:
            for i in free:
                shares[i] = counts[i] / total * left
            return shares
        for i in over:
            shares[i] = cap
            free.discard(i)
            left -= cap


def _floating(reference: State) -> list[str]:
    return [key for key, value in reference.items() if value.is_floating_point()]


def _columns(states: Sequence[State], keys: Sequence[str]) -> Iterator[torch.Tensor]:
    """The floating tensors ``keys`` of ``states`` flattened and laid end to end, as float64 blocks of one row
    per state and at most :data:`BLOCK_VALUES` values (at least one column): the coordinates in order, a
    block at a time, so that the working copies stay bounded whatever the number of states."""
    width = max(1, BLOCK_VALUES // len(states))
    segments: list[tuple[str, int, int]] = []
    filled = 0
    for key in keys:
        total, start = states[0][key].numel(), 0
        while start < total:
            stop = min(total, start + width - filled)
            segments.append((key, start, stop))
            filled, start = filled + stop - start, stop
            if filled == width:
                yield _gather(states, segments, filled)
                segments, filled = [], 0
    if segments:
        yield _gather(states, segments, filled)


def _gather(states: Sequence[State], segments: Sequence[tuple[str, int, int]], width: int) -> torch.Tensor:
    block = torch.empty(len(states), width, dtype=torch.float64)
    for row, state in zip(block, states):
        at = 0
        for key, start, stop in segments:
            row[at:at + stop - start].copy_(state[key].reshape(-1)[start:stop])
            at += stop - start
    return block


def _squared_steps(block: torch.Tensor) -> torch.Tensor:
    """Squared distances of a block's rows but the last from its last row (the reference)."""
    return (block[:-1] - block[-1]).square().sum(dim=1)


def indistinct(states: Sequence[State], reference: State) -> list[list[int]]:
    """``states``' indices in classes the coordinator cannot tell apart: two states closer to each other
    than :data:`SAME` times the smaller of their distances from ``reference`` share a class."""
    if not states:
        return []
    n = len(states)
    steps, pairs = torch.zeros(n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64)
    for block in _columns([*states, reference], _floating(reference)):
        steps += _squared_steps(block)
        for i in range(1, n):  # pairs[i, j]: squared distance of states i and j < i
            pairs[i, :i] += (block[:i] - block[i]).square().sum(dim=1)
    steps, pairs = steps.sqrt(), pairs.sqrt()
    classes: list[list[int]] = []
    for i in range(n):
        for members in classes:
            j = members[0]
            if float(pairs[i, j]) <= SAME * min(float(steps[i]), float(steps[j])):
                members.append(i)
                break
        else:
            classes.append([i])
    return classes


def screen(states: Sequence[State], factor: float, reference: State) -> dict[int, str]:
    """Index -> reason for each state farther from the coordinate-wise median of ``states`` than
    ``factor`` times the median of those distances or of the states' steps from ``reference``, whichever
    is larger (0 or fewer than three states: none refused)."""
    if factor <= 0 or len(states) < 3:
        return {}
    distances, steps = torch.zeros(len(states), dtype=torch.float64), torch.zeros(len(states), dtype=torch.float64)
    for block in _columns([*states, reference], _floating(reference)):
        rows = block[:-1]
        distances += (rows - rows.median(dim=0).values).square().sum(dim=1)
        steps += _squared_steps(block)
    distances, steps = distances.sqrt(), steps.sqrt()
    scale = max(float(distances.median()), float(steps.median()))
    return {i: f"update is {float(d):.4g} from the round's coordinate-wise median, more than train.update_factor "
               f"{factor:g} x the median distance (or step) {scale:.4g}"
            for i, d in enumerate(distances) if float(d) > factor * scale}


def aggregate(states: Sequence[State], weights: Sequence[float], how: str) -> State:
    """``states`` combined by ``how`` (one of :data:`AGGREGATIONS`; ``weights`` serve ``fedavg``); the
    coordinate-wise ones a block of coordinates at a time."""
    if how == "fedavg":
        return fedavg(states, weights)
    if how not in ("median", "trimmed_mean"):
        raise InputError(f"train.aggregation must be one of {list(AGGREGATIONS)}, got {how!r}")
    out: State = {}
    for key, first in states[0].items():
        if not first.is_floating_point():
            out[key] = first.clone()
            continue
        value, at = torch.empty(first.numel(), dtype=first.dtype), 0
        for block in _columns(states, [key]):
            if how == "median":
                part = block.median(dim=0).values
            else:
                part = block.sort(dim=0).values[1:-1].mean(dim=0) if len(states) >= 3 else block.mean(dim=0)
            value[at:at + part.numel()].copy_(part)
            at += part.numel()
        out[key] = value.reshape(first.shape)
    return out


def pool_norm(means: Sequence[Sequence[float]], stds: Sequence[Sequence[float]],
              counts: Sequence[float]) -> tuple[list[float], list[float]]:
    """Per-band mean and std of the union of samples, from each part's mean, std and size."""
    total = float(sum(counts))
    bands = range(len(means[0]))
    try:
        mean = [sum(n * m[b] for m, n in zip(means, counts)) / total for b in bands]
        second = [sum(n * (s[b] ** 2 + m[b] ** 2) for m, s, n in zip(means, stds, counts)) / total for b in bands]
        return mean, [math.sqrt(max(q - mu**2, 1e-12)) for q, mu in zip(second, mean)]
    except OverflowError:
        raise InputError("band statistics too large to pool (a band mean or std beyond the float range)") from None


def implausible_norms(members: Sequence[Member], factor: float) -> dict[str, str]:
    """Member name -> why its declared band statistics cannot be pooled with the other members' (``factor``
    0: none). With three or more members: a band std beyond ``factor`` times, or under 1/``factor`` of, the
    members' median std, or a band mean farther than ``factor`` median stds from the members' median
    mean. Two members cannot outvote each other: if a band's stds differ by more than ``factor`` times, or
    its means by more than ``factor`` times the larger std, both are named."""
    if factor <= 0 or len(members) < 2:
        return {}
    means = torch.tensor([m.summary.norm_mean for m in members], dtype=torch.float64)
    stds = torch.tensor([m.summary.norm_std for m in members], dtype=torch.float64).clamp_min(1e-12)
    bands = members[0].bands
    if len(members) == 2:
        ratio, gap = stds.max(0).values / stds.min(0).values, (means[0] - means[1]).abs() / stds.max(0).values
        bad = [b for b in range(len(bands)) if ratio[b] > factor or gap[b] > factor]
        if not bad:
            return {}
        b = bad[0]
        why = (f"band {bands[b]}: stds {stds[0, b].item():.4g} / {stds[1, b].item():.4g}, means "
               f"{means[0, b].item():.4g} / {means[1, b].item():.4g} differ beyond federation.stats_factor {factor:g}")
        pair = ((members[0], members[1]), (members[1], members[0]))
        return {m.name: f"band statistics disagree with {other.name}'s ({why}); two members cannot outvote each "
                        f"other, so each trains alone" for m, other in pair}
    mean, std = means.median(0).values, stds.median(0).values
    out = {}
    for i, m in enumerate(members):
        for b, band in enumerate(bands):
            spread = std[b] / factor <= stds[i, b] <= std[b] * factor
            if not spread or (means[i, b] - mean[b]).abs() > factor * std[b]:
                out[m.name] = (f"band {band}: declared mean {means[i, b].item():.4g} and std {stds[i, b].item():.4g} "
                               f"are implausible beside the group's median mean {mean[b].item():.4g} and std "
                               f"{std[b].item():.4g} (federation.stats_factor {factor:g}); left out of group pooling")
                break
    return out


def weighted_metrics(per_member: dict[str, dict[str, float]]) -> dict[str, float]:
    """``<split>_<metric>`` averaged over members, weighted by each member's ``<split>_count``."""
    out: dict[str, float] = {}
    keys = sorted({k for m in per_member.values() for k in m if not k.endswith("_count")})
    for key in keys:
        split = key.split("_", 1)[0]
        pairs = [(m[key], m.get(f"{split}_count", 1.0)) for m in per_member.values() if key in m]
        total = sum(w for _, w in pairs)
        if total > 0:
            out[key] = sum(v * w for v, w in pairs) / total
    return out


def group_card(group: Group, members: Sequence[Member], variant: str, max_share: float) -> SpecialistCard:
    """The card a group's specialist starts from: the members' bands (described as the first member's data
    summary describes them), their train-split band statistics pooled (each member's part at most
    ``max_share``), task and classes (metrics are filled in after training)."""
    counts = capped_shares([m.summary.tiles["train"] for m in members], max_share)
    mean, std = pool_norm([m.summary.norm_mean for m in members],
                          [m.summary.norm_std for m in members], counts)
    tiles: dict[str, int] = {}
    for m in members:
        for split, n in m.summary.tiles.items():
            tiles[split] = tiles.get(split, 0) + n
    first = members[0].summary
    return SpecialistCard(
        name=group.name, institutions=list(group.members), sensor=group.sensor,
        band_descriptors=first.catalog().band_records(members[0].bands) if first.sensor else {},
        bands=list(members[0].bands), norm_mean=mean, norm_std=std, task=group.task,
        task_type=group.task_type, classes=list(group.classes), variant=variant,
        data_summary={"tiles": tiles, "institutions": {m.name: m.summary.tiles for m in members}},
    )


def round_config(settings: TrainSettings, seed: int, round_index: int) -> TrainConfig:
    """What every member trains with in round ``round_index`` (1-based): ``local_epochs`` at the round's
    learning rate (cosine over the rounds), the part of the run's warm-up that falls in this round."""
    lr = settings.lr * 0.5 * (1 + math.cos(math.pi * (round_index - 1) / settings.rounds))
    warmup = min(settings.local_epochs, max(0.0, settings.warmup_epochs - (round_index - 1) * settings.local_epochs))
    return TrainConfig(epochs=settings.local_epochs, batch_size=settings.batch_size, lr=lr,
                       weight_decay=settings.weight_decay, warmup_epochs=warmup, device=settings.device,
                       amp=settings.amp, seed=seed * 1000 + round_index, max_steps=settings.max_steps)


def _state(module: nn.Module) -> State:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


_SECOND = "head."  # the prefix of a joined state's second part (a task head, or FCMAE's decoder)


def join_states(first: State, second: State) -> State:
    """One state of both parts (``second``'s keys prefixed), so that :func:`combine` screens them together."""
    return {**first, **{_SECOND + k: v for k, v in second.items()}}


def split_states(state: State) -> tuple[State, State]:
    """The two parts of a :func:`join_states` state."""
    return ({k: v for k, v in state.items() if not k.startswith(_SECOND)},
            {k[len(_SECOND):]: v for k, v in state.items() if k.startswith(_SECOND)})


def combine(where: str, reference: State, updates: Sequence[tuple[str, State]], counts: dict[str, int],
            settings: TrainSettings) -> tuple[State | None, dict[str, Any]]:
    """One round's checked ``updates`` (member, state) screened and aggregated (see the module docstring):
    the new state, ``None`` when fewer than ``train.min_replies`` are kept, and the round record's
    ``refused`` (member -> reason) with ``shares`` or ``skipped``; ``counts``: the members' declared train
    tiles, ``where`` starts the log lines; ``max_share``: the largest weight of one distinct update."""
    states = [state for _, state in updates]
    classes = indistinct(states, reference)
    refused_classes = screen([states[c[0]] for c in classes], settings.update_factor, reference)
    record: dict[str, Any] = {
        "refused": {updates[i][0]: reason for k, reason in refused_classes.items() for i in classes[k]}}
    for member, reason in record["refused"].items():
        log.warning("%s refused the update of %s: %s", where, member, reason)
    kept = [c for k, c in enumerate(classes) if k not in refused_classes]
    if sum(map(len, kept)) < settings.min_replies:
        record["skipped"] = f"{sum(map(len, kept))} valid update(s), train.min_replies is {settings.min_replies}"
        log.warning("%s kept its weights: %s", where, record["skipped"])
        return None, record
    weights = capped_shares([max(counts[updates[i][0]] for i in c) for c in kept], settings.max_weight_share)
    record["shares"] = {updates[i][0]: w / len(c) for c, w in zip(kept, weights) for i in c}
    record["max_share"] = max(weights)  # the most one kept update moves the mean by (per unit of its length)
    return aggregate([states[c[0]] for c in kept], weights, settings.aggregation), record


@dataclass
class Update:
    """One member's reply to a round: its weights and metrics (``num_examples`` is what it claims)."""

    member: str
    encoder: State
    head: State
    metrics: dict[str, float]


@dataclass
class GroupTraining:
    """The global state of one group's specialist across FedAvg rounds."""

    group: Group
    card: SpecialistCard
    encoder: State
    head: State
    train_counts: dict[str, int]  # member -> train tiles it declared at discovery (the FedAvg weights, capped)
    settings: TrainSettings
    history: list[dict[str, Any]] = field(default_factory=list)
    rounds_done: int = 0

    @classmethod
    def start(cls, group: Group, members: Sequence[Member], settings: TrainSettings, seed: int, *,
              tolerance_nm: float) -> "GroupTraining":
        """The group's card and a seeded initial encoder (or ``settings.init``'s, its stem adapted to the group's
        bands within ``tolerance_nm``, recorded in the card) and head."""
        card = group_card(group, members, settings.variant, settings.max_weight_share)
        torch.manual_seed(seed)
        specialist = Specialist.from_card(card)
        if settings.init != RANDOM:
            card.extra["init"] = load_encoder_weights(specialist.encoder, settings.init, card.bands,
                                                      tolerance_nm=tolerance_nm).record()
        head = build_head(card.task_type, specialist.feature_dims, card.num_classes)
        return cls(group, card, _state(specialist.encoder), _state(head),
                   {m.name: int(m.summary.tiles["train"]) for m in members}, settings)

    def check(self, update: Update, source: str) -> Update:
        """``update`` if its tensors match the global state's (``ValueError`` naming ``source`` otherwise)."""
        if not update.metrics.get("num_examples", 0) > 0:
            raise InputError(f"{source}: 'num_examples' must be positive, got {update.metrics.get('num_examples')}")
        check_state(self.encoder, update.encoder, f"{source} encoder")
        check_state(self.head, update.head, f"{source} head")
        dp = self.settings.dp
        if dp.mode == "client":
            norm = update_norm([self.encoder, self.head], [update.encoder, update.head])
            if norm > dp.clipping_norm * (1 + CLIP_SLACK):
                raise InputError(f"{source}: update norm {norm:.6g} exceeds train.dp.clipping_norm "
                                 f"{dp.clipping_norm:g} (train.dp.mode 'client': the member clips its update)")
        return update

    def _clipped(self, updates: Sequence[Update], record: dict[str, Any]) -> list[Update]:
        """``updates`` clipped to ``train.dp.clipping_norm`` (their norms before in ``record['dp']``)."""
        out, norms = [], {}
        for u in updates:
            (encoder, head), norms[u.member] = clip_update([self.encoder, self.head], [u.encoder, u.head],
                                                           self.settings.dp.clipping_norm)
            out.append(Update(u.member, encoder, head, u.metrics))
        record["dp"] = {"update_norms": norms}
        return out

    def start_from(self, encoder: State, record: dict[str, Any]) -> None:
        """Start from ``encoder`` (checked against the initial encoder's tensors) instead; ``record`` (where it
        came from) goes into the card's ``extra["pretrain"]``."""
        source = f"group {self.group.name}'s pretrained encoder"
        self.encoder = {k: v.clone() for k, v in check_state(self.encoder, encoder, source).items()}
        self.card.extra["pretrain"] = record

    def apply(self, round_index: int, lr: float, updates: Sequence[Update]) -> dict[str, Any]:
        """Screen the (checked) ``updates`` and aggregate the kept ones into the global state (see
        :func:`combine`); the round's history record, whose ``refused`` maps each refused member to the reason."""
        per_member = {u.member: u.metrics for u in updates}
        record: dict[str, Any] = {
            "round": round_index, "lr": lr, "institutions": per_member,
            "received": weighted_metrics({k: {m: v for m, v in x.items() if m.startswith("val_")}
                                          for k, x in per_member.items()})}
        settings = self.settings
        if settings.dp.mode == "server":
            updates = self._clipped(updates, record)
        state, outcome = combine(f"Group {self.group.name} round {round_index}", join_states(self.encoder, self.head),
                                 [(u.member, join_states(u.encoder, u.head)) for u in updates], self.train_counts,
                                 settings)
        record.update(outcome)
        if state is not None:
            self.encoder, self.head = split_states(state)
            if settings.dp.mode != "none":
                stdv = noise_stdv(settings.dp.noise_multiplier, settings.dp.clipping_norm, outcome["max_share"])
                self.encoder, self.head = add_noise([self.encoder, self.head], stdv)
                record.setdefault("dp", {})["noise_stdv"] = stdv
            self.rounds_done += 1
        self.history.append(record)
        monitor = f"val_{MONITOR[self.card.task_type]}"
        value = record["received"].get(monitor)
        log.info("Group %s round %d: %s of the received model %s; train loss %s", self.group.name, round_index,
                 monitor, "n/a" if value is None else f"{value:.4f}",
                 {m: round(x["train_loss"], 4) for m, x in per_member.items()})
        return record

    def seal(self) -> None:
        """Fill the card's sha256 and parameter count from the final encoder tensors: the hash of the file its
        keepers write (:func:`specialists.artifact.state_bytes`; the coordinator keeps only the hash)."""
        state_bytes(self.card, self.encoder)

    def privacy(self) -> dict[str, Any] | None:
        """``train.dp`` and the epsilon its noised rounds spent (``None`` with DP off)."""
        dp = self.settings.dp
        if dp.mode == "none":
            return None
        return {**asdict(dp), "rounds": self.rounds_done,
                "epsilon": epsilon(dp.noise_multiplier, self.rounds_done, dp.delta)}

    def finish(self, per_member: dict[str, dict[str, float]], settings: TrainSettings) -> SpecialistCard:
        """The card with the members' final metrics (weighted), the round history, who keeps it and, with
        ``train.dp``, the privacy spent (``extra['dp']``, ``metrics['dp_epsilon']``)."""
        card = self.card
        card.metrics.update(weighted_metrics(per_member))
        if (dp := self.privacy()) is not None:
            card.extra["dp"] = dp
            card.metrics["dp_epsilon"] = dp["epsilon"]
        card.extra["federation"] = {"rounds": settings.rounds, "rounds_applied": self.rounds_done,
                                    "per_institution": per_member, "history": self.history,
                                    "train": asdict(settings)}
        card.extra["kept_by"] = sorted(per_member)
        return card
