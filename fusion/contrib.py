"""Each specialist's contribution to the ensemble: leave-one-out, Monte-Carlo Shapley, CKA redundancy,
learned gates.

The game: a coalition of specialists is worth the probe score of the concatenation of its members'
features (:class:`CoalitionGame`). Each member's features are extracted once
(:func:`extract_member_features`); a coalition only concatenates cached features and fits a probe,
and every coalition's value is memoised, so Shapley sampling costs at most one probe per distinct
coalition. The empty coalition is worth the score of a constant prediction (the training prior).

Shapley: permutation sampling with truncation (Ghorbani & Zou's TMC-Shapley): along a permutation,
once the prefix is within ``tolerance`` of the grand coalition's value the remaining marginals are
taken as 0. The interval is the normal approximation ``mean +- z * sd / sqrt(permutations)``.

Random-twin baseline: a trained encoder's features help a linear probe even when the training taught
nothing (random convolutional features are informative), so a plain Shapley value is positive for a
specialist trained on shuffled labels. When the game also holds each player's *random twin* (the same
variant and bands, freshly initialised: :func:`random_twin`, features under :func:`twin_name`), every
marginal is taken against the twin: ``v(S + p) - v(S + twin(p))``, and leave-one-out is
``v(all) - v(all with p replaced by its twin)``. A score then says what the specialist's *training*
adds; at or below zero it does no better than untrained weights of its shape.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from statistics import NormalDist

import numpy as np
import torch
from tqdm import tqdm

from fusion.ensemble import Ensemble
from fusion.featstats import global_pool
from fusion.probes import FeatureSet, knn_probe, linear_probe, score_predictions, segmentation_probe
from geodata.manifest import TaskSpec
from specialists.card import SpecialistCard
from specialists.heads import task_loss
from specialists.model import Specialist
from geodata.errors import InputError

__all__ = [
    "Contribution",
    "ShapleyEstimate",
    "CoalitionGame",
    "BASELINE_NONE",
    "BASELINE_TWIN",
    "TWIN_PREFIX",
    "twin_name",
    "random_twin",
    "with_twins",
    "extract_member_features",
    "shapley_monte_carlo",
    "leave_one_out",
    "linear_cka",
    "cka_matrix",
    "learned_gates",
    "contributions",
    "combine_contributions",
]

log = logging.getLogger(__name__)

TWIN_PREFIX = "random-twin:"
BASELINE_NONE, BASELINE_TWIN = "none", "random twin"


def twin_name(name: str) -> str:
    return TWIN_PREFIX + name


def random_twin(card: SpecialistCard, seed: int = 0) -> Specialist:
    """An untrained specialist of ``card``'s variant and bands (seeded init), named as its twin."""
    twin_card = replace(copy.deepcopy(card), name=twin_name(card.name), metrics={}, weights_sha256="")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Specialist.from_card(twin_card).eval()


def with_twins(ensemble: Ensemble, seed: int = 0) -> Ensemble:
    """``ensemble``'s members and their random twins (identity feature statistics: probes standardise)."""
    twins = {twin_name(n): random_twin(s.card, seed) for n, s in ensemble.specialists.items()}
    return Ensemble({**ensemble.specialists, **twins}, {**ensemble.stats}, tolerance_nm=ensemble.tolerance_nm)


@dataclass(frozen=True)
class ShapleyEstimate:
    mean: float
    ci_low: float
    ci_high: float
    permutations: int


@dataclass
class Contribution:
    """One specialist's scores on one task (or combined over tasks)."""

    name: str
    shapley: float
    ci_low: float
    ci_high: float
    loo: float
    permutations: int
    gate: float | None = None
    tasks: tuple[str, ...] = ()
    baseline: str = BASELINE_NONE  # what the marginals are taken against (BASELINE_NONE or BASELINE_TWIN)

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def extract_member_features(ensemble: Ensemble, batches: Iterable[Mapping], with_maps: bool = False,
                            device: str = "cpu") -> dict[str, FeatureSet]:
    """Each applicable member's standardised features on labelled ``batches``, in one pass."""
    parts: dict[str, dict[str, list]] = {}
    targets, ids = [], []
    for batch in tqdm(batches, desc="member features", unit="batch", leave=False):
        for name, features in ensemble.specialist_features(batch["image"].to(device), batch["bands"]).items():
            part = parts.setdefault(name, {"pooled": [], "maps": []})
            part["pooled"].append(global_pool(features[-1]).float().cpu())
            if with_maps:
                part["maps"].append([f.half().cpu() for f in features])
        targets.append(torch.as_tensor(batch["target"]))
        ids.extend(batch["id"])
    if not ids:
        raise InputError("no batches to extract member features from")
    target = torch.cat(targets)
    out = {}
    for name, part in parts.items():
        if len(part["pooled"]) != len(targets):
            raise InputError(f"specialist {name!r} could read only some batches; give batches of one band set")
        maps = [torch.cat(scale) for scale in zip(*part["maps"])] if with_maps else None
        out[name] = FeatureSet(torch.cat(part["pooled"]), target, ids, maps)
    return out


class CoalitionGame:
    """Coalition value = probe test score on the members' concatenated cached features (memoised).

    Feature sets named :func:`twin_name` are the players' random twins (module docstring): not players
    themselves, only the baseline each player's marginals are taken against (``self.twins``)."""

    def __init__(self, train: Mapping[str, FeatureSet], test: Mapping[str, FeatureSet], task: TaskSpec,
                 method: str = "linear", val: Mapping[str, FeatureSet] | None = None,
                 weight_decays: Sequence[float] = (1e-2,), seed: int = 0) -> None:
        if set(train) != set(test) or (val is not None and set(val) != set(train)):
            raise InputError(f"train/test/val features cover different specialists: {sorted(train)} vs {sorted(test)}")
        self.players = [n for n in train if not n.startswith(TWIN_PREFIX)]
        self.twins = {p: twin_name(p) for p in self.players if twin_name(p) in train}
        if self.twins and len(self.twins) != len(self.players):
            missing = [p for p in self.players if p not in self.twins]
            raise InputError(f"random twins are given for some specialists but not for {missing}")
        self.train, self.test, self.val, self.task = train, test, val, task
        self.method, self.weight_decays, self.seed = method, tuple(weight_decays), seed
        self._values: dict[frozenset[str], float] = {}

    @property
    def evaluations(self) -> int:
        return len(self._values)

    def __call__(self, coalition: Iterable[str]) -> float:
        key = frozenset(coalition)
        if key not in self._values:
            self._values[key] = self._evaluate(key)
        return self._values[key]

    def _evaluate(self, coalition: frozenset[str]) -> float:
        if not coalition:
            return self._prior_score()
        members = [p for p in self.train if p in coalition]
        train = FeatureSet.concat([self.train[p] for p in members])
        test = FeatureSet.concat([self.test[p] for p in members])
        if self.method == "linear":
            val = FeatureSet.concat([self.val[p] for p in members]) if self.val is not None else None
            return linear_probe(train, test, self.task, val, self.weight_decays, self.seed)
        if self.method == "knn":
            return knn_probe(train, test, self.task)
        if self.method == "segmentation":
            return segmentation_probe(train, test, self.task, self.seed)
        raise InputError(f"unknown probe method {self.method!r}")

    def _prior_score(self) -> float:
        """Score of predicting the training prior everywhere."""
        y, task = self.train[self.players[0]].targets, self.task
        test_y = self.test[self.players[0]].targets
        if task.type == "multilabel":
            prior = y.float().mean(0)
        else:
            valid = y[y != task.ignore_index] if task.type == "segmentation" else y
            prior = torch.bincount(valid.flatten(), minlength=task.num_classes).float()
        n = test_y.shape[0]
        scores = prior.view(1, -1, *([1] * (test_y.ndim - 1))).expand(n, -1, *test_y.shape[1:]) \
            if task.type == "segmentation" else prior.expand(n, -1)
        return score_predictions(scores.contiguous(), test_y, task)


def shapley_monte_carlo(
    players: Sequence[str],
    value: Callable[[frozenset[str]], float],
    permutations: int = 200,
    tolerance: float = 1e-3,
    confidence: float = 0.95,
    seed: int = 0,
    baseline: Mapping[str, str] | None = None,
) -> dict[str, ShapleyEstimate]:
    """Truncated Monte-Carlo Shapley values with normal-approximation intervals (module docstring).

    With ``baseline`` (player -> its twin's name), each marginal is ``v(S + p) - v(S + baseline[p])``."""
    rng = np.random.default_rng(seed)
    players = list(players)
    full = value(frozenset(players))
    marginals = {p: [] for p in players}
    for _ in tqdm(range(permutations), desc="shapley", unit="perm", leave=False):
        prefix: set[str] = set()
        before = value(frozenset())
        for index in rng.permutation(len(players)):
            player = players[index]
            if abs(full - before) < tolerance:
                marginals[player].append(0.0)
                continue
            against = value(frozenset(prefix | {baseline[player]})) if baseline else before
            prefix.add(player)
            after = value(frozenset(prefix))
            marginals[player].append(after - against)
            before = after
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    out = {}
    for p, values in marginals.items():
        arr = np.asarray(values)
        half = z * arr.std(ddof=1) / math.sqrt(len(arr)) if len(arr) > 1 else float("inf")
        out[p] = ShapleyEstimate(float(arr.mean()), float(arr.mean() - half), float(arr.mean() + half), len(arr))
    return out


def leave_one_out(players: Sequence[str], value: Callable[[frozenset[str]], float],
                  baseline: Mapping[str, str] | None = None) -> dict[str, float]:
    """``v(all) - v(all without p)`` per player (with ``baseline``: ``p`` replaced by ``baseline[p]``)."""
    full = frozenset(players)
    return {p: value(full) - value(full - {p} | ({baseline[p]} if baseline else set())) for p in players}


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear centred kernel alignment of two feature matrices over the same ``N`` samples."""
    if x.shape[0] != y.shape[0]:
        raise InputError(f"CKA needs features of the same samples: {x.shape[0]} vs {y.shape[0]} rows")
    x = (x - x.mean(0)).double()
    y = (y - y.mean(0)).double()
    cross = (y.T @ x).square().sum()
    return float(cross / ((x.T @ x).square().sum().sqrt() * (y.T @ y).square().sum().sqrt()))


def cka_matrix(features: Mapping[str, torch.Tensor]) -> tuple[list[str], np.ndarray]:
    names = list(features)
    out = np.eye(len(names))
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            out[i, j] = out[j, i] = linear_cka(features[a], features[names[j]])
    return names, out


def learned_gates(train: Mapping[str, FeatureSet], task: TaskSpec, sparsity: float = 1e-2, steps: int = 300,
                  lr: float = 0.05, seed: int = 0) -> dict[str, float]:
    """Gate in [0, 1] per specialist, trained with a linear classifier on gated pooled features and an
    L1 penalty ``sparsity * sum(gates)``; a gate near 0 marks a specialist the task does not need."""
    if task.type == "segmentation":
        raise InputError("learned gates read pooled features (classification or multilabel tasks)")
    torch.manual_seed(seed)
    names = list(train)
    blocks = []
    for n in names:
        x = train[n].pooled
        blocks.append((x - x.mean(0)) / x.std(0, unbiased=False).clamp_min(1e-6))
    y = train[names[0]].targets
    y = y.float() if task.type == "multilabel" else y
    logits = torch.zeros(len(names), requires_grad=True)
    layer = torch.nn.Linear(sum(b.shape[1] for b in blocks), task.num_classes)
    optimizer = torch.optim.Adam([logits, *layer.parameters()], lr=lr)
    loss_fn = task_loss(task.type)
    with torch.enable_grad():
        for _ in range(steps):
            gates = torch.sigmoid(logits)
            x = torch.cat([g * b for g, b in zip(gates, blocks)], dim=1)
            loss = loss_fn(layer(x), y) + sparsity * gates.sum() + 1e-4 * layer.weight.square().sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return {n: float(g) for n, g in zip(names, torch.sigmoid(logits).detach())}


def contributions(game: CoalitionGame, task_name: str, permutations: int = 200, tolerance: float = 1e-3,
                  confidence: float = 0.95, seed: int = 0, gates: bool = False) -> list[Contribution]:
    """Leave-one-out and Shapley (and optionally learned gates) for every player of ``game``."""
    shapley = shapley_monte_carlo(game.players, game, permutations, tolerance, confidence, seed, game.twins)
    loo = leave_one_out(game.players, game, game.twins)
    gate = learned_gates({p: game.train[p] for p in game.players}, game.task, seed=seed) if gates else {}
    log.info("contributions on %s: %d coalition probes for %d players", task_name, game.evaluations,
                len(game.players))
    baseline = BASELINE_TWIN if game.twins else BASELINE_NONE
    return [Contribution(p, shapley[p].mean, shapley[p].ci_low, shapley[p].ci_high, loo[p],
                         shapley[p].permutations, gate.get(p), (task_name,), baseline) for p in game.players]


def combine_contributions(per_task: Sequence[Sequence[Contribution]]) -> list[Contribution]:
    """Average each specialist's scores over the tasks it took part in; intervals combine as
    independent estimates (half-widths add in quadrature, divided by the number of tasks)."""
    grouped: dict[str, list[Contribution]] = {}
    for task_scores in per_task:
        for c in task_scores:
            grouped.setdefault(c.name, []).append(c)
    out = []
    for name, items in grouped.items():
        k = len(items)
        mean = sum(c.shapley for c in items) / k
        half = math.sqrt(sum(((c.ci_high - c.ci_low) / 2) ** 2 for c in items)) / k
        gates = [c.gate for c in items if c.gate is not None]
        baselines = {c.baseline for c in items}
        if len(baselines) > 1:
            raise InputError(f"specialist {name!r} was scored against different baselines {sorted(baselines)}")
        out.append(Contribution(name, mean, mean - half, mean + half, sum(c.loo for c in items) / k,
                                sum(c.permutations for c in items), sum(gates) / len(gates) if gates else None,
                                tuple(t for c in items for t in c.tasks), baselines.pop()))
    return out
