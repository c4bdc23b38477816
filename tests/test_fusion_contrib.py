"""Contributions and pruning: Shapley on games with known answers, CKA, coalition probes, smaller registry."""

import json
import math

import pytest
import torch
from fusion_toys import TOLERANCE_NM, AERIAL_BANDS, S2_BANDS, make_registry

from fusion import Ensemble, Registry
from fusion.contrib import (BASELINE_TWIN, CoalitionGame, Contribution, cka_matrix, combine_contributions,
                            contributions, extract_member_features, leave_one_out, learned_gates, linear_cka,
                            random_twin, shapley_monte_carlo, twin_name, with_twins)
from fusion.probes import FeatureSet
from fusion.prune import prune, select_kept
from geodata.manifest import TaskSpec


def test_additive_game_shapley_equals_individual_values():
    worth = {"a": 0.5, "b": 0.2, "c": -0.1, "d": 0.0}
    estimates = shapley_monte_carlo(list(worth), lambda s: sum(worth[p] for p in s), permutations=50, tolerance=0)
    for p, v in worth.items():
        assert estimates[p].mean == pytest.approx(v, abs=1e-9)
        assert estimates[p].ci_low == pytest.approx(v, abs=1e-9) and estimates[p].ci_high == pytest.approx(v, abs=1e-9)


def test_symmetric_players_share_equally_with_an_honest_interval():
    # glove game: value 1 once "l" and any of "r1", "r2" are in; exact Shapley (2/3, 1/6, 1/6)
    def value(s):
        return float("l" in s and bool({"r1", "r2"} & s))

    est = shapley_monte_carlo(["l", "r1", "r2"], value, permutations=400, tolerance=0, seed=0)
    half_widths = sum(est[p].ci_high - est[p].mean for p in ("r1", "r2"))
    assert abs(est["r1"].mean - est["r2"].mean) < half_widths  # symmetric players agree
    for p, exact in {"l": 2 / 3, "r1": 1 / 6, "r2": 1 / 6}.items():
        assert est[p].ci_low <= exact <= est[p].ci_high
    assert sum(e.mean for e in est.values()) == pytest.approx(1.0)  # efficiency
    assert leave_one_out(["l", "r1", "r2"], value) == {"l": 1.0, "r1": 0.0, "r2": 0.0}


def test_truncation_skips_coalitions():
    seen = []

    def value(s):
        seen.append(frozenset(s))
        return 1.0 if "big" in s else 0.0

    est = shapley_monte_carlo(["big", "x", "y", "z"], value, permutations=30, tolerance=1e-6, seed=0)
    assert est["big"].mean == pytest.approx(1.0) and est["x"].mean == 0.0
    assert all(len(s) <= 4 for s in seen) and len(seen) < 30 * 5


def test_cka():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 20, generator=g)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g))
    assert linear_cka(x, x) == pytest.approx(1.0)
    assert linear_cka(x, 3 * x @ q + 1) == pytest.approx(1.0, abs=1e-6)  # invariant to rotation, scale, shift
    assert linear_cka(x, torch.randn(100, 20, generator=g)) < 0.4
    names, matrix = cka_matrix({"a": x, "b": x, "c": torch.randn(100, 5, generator=g)})
    assert names == ["a", "b", "c"] and matrix[0, 1] == pytest.approx(1.0) and matrix[2, 2] == 1.0


def _features(n, seed, y):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, 16, generator=torch.Generator().manual_seed(7)) * 2
    good = centres[y] + torch.randn(n, 16, generator=g)
    weaker = centres[y] + 3 * torch.randn(n, 16, generator=g)
    useless = torch.randn(n, 16, generator=g)
    ids = list(range(n))
    return {"good": FeatureSet(good, y, ids), "weaker": FeatureSet(weaker, y, ids),
            "useless": FeatureSet(useless, y, ids)}


def test_useless_specialist_gets_the_lowest_contribution():
    task = TaskSpec("classification", ["a", "b", "c"])
    y_train, y_test = torch.arange(120) % 3, torch.arange(90) % 3
    game = CoalitionGame(_features(120, 0, y_train), _features(90, 1, y_test), task)
    scores = {c.name: c for c in contributions(game, "toy", permutations=60, gates=True)}
    assert game.evaluations <= 8  # every coalition probed at most once
    assert scores["useless"].shapley == min(c.shapley for c in scores.values())
    assert scores["useless"].shapley < 0.02 < scores["good"].shapley
    assert scores["good"].gate > scores["useless"].gate
    assert game(frozenset()) == pytest.approx(1 / 3)  # constant prediction of the prior


def test_learned_gates_prefer_the_informative_block():
    y = torch.arange(150) % 3
    gates = learned_gates(_features(150, 2, y), TaskSpec("classification", ["a", "b", "c"]), sparsity=0.05)
    assert gates["good"] > gates["useless"]


def test_combine_contributions_averages_over_tasks():
    a = [Contribution("x", 0.2, 0.1, 0.3, 0.1, 10, tasks=("t1",))]
    b = [Contribution("x", 0.0, -0.1, 0.1, 0.0, 10, tasks=("t2",)), Contribution("y", 0.1, 0.0, 0.2, 0.1, 10)]
    combined = {c.name: c for c in combine_contributions([a, b])}
    assert combined["x"].shapley == pytest.approx(0.1) and combined["x"].tasks == ("t1", "t2")
    assert combined["x"].ci_high - combined["x"].ci_low == pytest.approx(2 * (0.02 ** 0.5) / 2)


def test_prune_writes_a_smaller_registry_that_runs_fewer_specialists(tmp_path):
    registry = make_registry(tmp_path / "full")
    ensemble = Ensemble.from_registry(registry, tolerance_nm=TOLERANCE_NM)
    g = torch.Generator().manual_seed(0)
    batches = [{"image": torch.rand(6, 4, 32, 32, generator=g), "bands": S2_BANDS, "target": torch.arange(6) % 2,
                "id": [f"{b}-{i}" for i in range(6)]} for b in range(2)]
    members = extract_member_features(ensemble, batches)
    assert set(members) == {"s2", "aerial"} and members["s2"].pooled.shape == (12, 320)
    scores = [Contribution("s2", 0.05, 0.01, 0.09, 0.04, 20), Contribution("aerial", -0.02, -0.05, -0.001, -0.01, 20)]
    with pytest.raises(ValueError, match="give keep_top_k"):
        select_kept(registry.names, scores)
    assert select_kept(registry.names, scores, keep_top_k=1)[0] == ["s2", "s1"]  # s1 unscored: kept
    cka = cka_matrix({n: f.pooled for n, f in members.items()})
    pruned = prune(registry, scores, tmp_path / "pruned", drop_nonpositive=True, cka=cka)
    assert Registry(tmp_path / "pruned").names == ["s2", "s1"] == pruned.names
    report = json.loads((tmp_path / "pruned" / "prune_report.json").read_text())
    assert list(report["dropped"]) == ["aerial"] and report["unscored"] == ["s1"]
    assert "| aerial |" in (tmp_path / "pruned" / "prune_report.md").read_text()
    small = Ensemble.from_registry(pruned, tolerance_nm=TOLERANCE_NM)
    calls = []
    for spec in small.specialists.values():
        spec.register_forward_hook(lambda *_: calls.append(1))
    small(torch.rand(1, 4, 32, 32), S2_BANDS)
    assert len(calls) == 1 and small.applicable(AERIAL_BANDS) == ["s2"]


def test_constant_and_huge_features_are_scored_without_overflow_and_the_constant_one_is_pruned():
    """Well-formed but harmful uploads: a specialist with constant features contributes exactly nothing
    (its interval is [0, 0], so the drop-nonpositive rule removes it, saying why); one with huge
    (1e12-scaled) noise features cannot swamp the probe, whose features are standardised."""
    task = TaskSpec("classification", ["a", "b", "c"])
    y_train, y_test = torch.arange(120) % 3, torch.arange(90) % 3
    train, test = _features(120, 0, y_train), _features(90, 1, y_test)
    for split, n in ((train, 120), (test, 90)):
        split["constant"] = FeatureSet(torch.full((n, 16), 5.0), split["good"].targets, split["good"].ids)
        split["huge"] = FeatureSet(split.pop("useless").pooled * 1e12, split["good"].targets, split["good"].ids)
    scores = {c.name: c for c in contributions(CoalitionGame(train, test, task), "toy", permutations=40)}
    assert all(math.isfinite(v) for c in scores.values() for v in (c.shapley, c.ci_low, c.ci_high))
    assert scores["constant"].shapley == 0.0 and scores["constant"].ci_high == 0.0
    assert scores["huge"].shapley < 0.05 < scores["good"].shapley
    kept, dropped = select_kept(list(scores), list(scores.values()), drop_nonpositive=True)
    assert "constant" in dropped and "at or below zero" in dropped["constant"] and "good" in kept


def test_shapley_against_a_baseline_equals_the_gain_over_each_twin_on_an_additive_game():
    worth = {"a": 0.5, "b": 0.2, "c": 0.1, "twin-a": 0.3, "twin-b": 0.3, "twin-c": 0.1}
    baseline = {p: f"twin-{p}" for p in "abc"}
    estimates = shapley_monte_carlo(list("abc"), lambda s: sum(worth[p] for p in s), permutations=40, tolerance=0,
                                    baseline=baseline)
    for p in "abc":
        assert estimates[p].mean == pytest.approx(worth[p] - worth[baseline[p]], abs=1e-9)
    loo = leave_one_out(list("abc"), lambda s: sum(worth[p] for p in s), baseline)
    assert loo == pytest.approx({"a": 0.2, "b": -0.1, "c": 0.0})


def test_random_twins_turn_a_specialist_no_better_than_untrained_weights_nonpositive():
    """A "memoriser" keeps some signal (plain Shapley > 0) but less than the untrained encoder of its shape
    (its twin): against the twin its interval lies below zero and drop-nonpositive removes it, saying why;
    the good specialist stays positive."""
    task = TaskSpec("classification", ["a", "b", "c"])
    y_train, y_test = torch.arange(150) % 3, torch.arange(90) % 3
    train, test = _features(150, 0, y_train), _features(90, 1, y_test)
    centres = torch.randn(3, 16, generator=torch.Generator().manual_seed(7)) * 2
    for split, y, seed in ((train, y_train, 3), (test, y_test, 4)):
        g = torch.Generator().manual_seed(seed)
        split.pop("weaker")
        split["memoriser"] = FeatureSet(centres[y] * 0.3 + torch.randn(len(y), 16, generator=g), y, split["good"].ids)
        split[twin_name("memoriser")] = FeatureSet(centres[y] + 2 * torch.randn(len(y), 16, generator=g), y,
                                                   split["good"].ids)
        split[twin_name("good")] = split[twin_name("memoriser")]
        split[twin_name("useless")] = split["useless"]
    plain = {c.name: c for c in contributions(
        CoalitionGame({k: v for k, v in train.items() if "twin" not in k},
                      {k: v for k, v in test.items() if "twin" not in k}, task), "toy", permutations=60)}
    game = CoalitionGame(train, test, task)
    assert game.players == ["good", "useless", "memoriser"]
    scores = {c.name: c for c in contributions(game, "toy", permutations=60, gates=True)}
    assert plain["memoriser"].shapley > 0 and plain["memoriser"].baseline == "none"
    assert scores["memoriser"].ci_high <= 0 < scores["good"].ci_low
    assert scores["useless"].shapley == 0.0  # identical to its twin: adds exactly what untrained weights add
    assert all(c.baseline == BASELINE_TWIN for c in scores.values())
    kept, dropped = select_kept(list(scores), list(scores.values()), drop_nonpositive=True)
    assert "good" in kept and "against its random twin" in dropped["memoriser"]
    with pytest.raises(ValueError, match="not for \\['useless'\\]"):
        CoalitionGame({k: v for k, v in train.items() if k != twin_name("useless")},
                      {k: v for k, v in test.items() if k != twin_name("useless")}, task)


def test_random_twin_has_the_shape_of_the_specialist_and_seeded_untrained_weights(tmp_path):
    registry = make_registry(tmp_path / "reg")
    ensemble = Ensemble.from_registry(registry, tolerance_nm=TOLERANCE_NM)
    card = ensemble.specialists["s2"].card
    twin, again, other = random_twin(card, 0), random_twin(card, 0), random_twin(card, 1)
    assert twin.card.name == twin_name("s2") and twin.card.bands == card.bands and twin.card.variant == card.variant
    assert twin.card.weights_sha256 == "" and card.name == "s2"  # the source card is untouched
    trained, fresh = ensemble.specialists["s2"].state_dict(), twin.state_dict()
    assert all(torch.equal(fresh[k], again.state_dict()[k]) for k in fresh)
    assert not all(torch.equal(fresh[k], other.state_dict()[k]) for k in fresh)
    assert not all(torch.equal(fresh[k], trained[k]) for k in fresh)
    g = torch.Generator().manual_seed(0)
    batches = [{"image": torch.rand(6, 4, 32, 32, generator=g), "bands": S2_BANDS, "target": torch.arange(6) % 2,
                "id": [f"{b}-{i}" for i in range(6)]} for b in range(2)]
    members = extract_member_features(with_twins(ensemble), batches)
    assert set(members) == {"s2", "aerial", twin_name("s2"), twin_name("aerial")}
    game = CoalitionGame(members, members, TaskSpec("classification", ["a", "b"]))
    assert game.players == ["s2", "aerial"] and game.twins == {p: twin_name(p) for p in ("s2", "aerial")}
