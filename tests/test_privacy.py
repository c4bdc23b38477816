"""Differential privacy of phase *train* (``train.dp``, :mod:`pipeline.privacy`): clipping bounds a member's
update, the noise has the stated std, epsilon falls as the noise grows, bad settings are one line naming the
field, and a run with DP on reports the epsilon its groups spent (and refuses an unclipped update)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from eosfed.cli import main
from flower_harness import InProcessGrid
from pipeline.fedavg import GroupTraining, Update
from pipeline.privacy import add_noise, clip_update, epsilon, noise_stdv, update_norm
from pipeline.roster import Group
from pipeline.settings import DpSettings, TrainSettings
from server.run import run_experiment
from specialists import SpecialistCard
from tiny_run import simulated_nodes, tamper_replies, tiny_run_config


def _parts(seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"w": torch.randn(40, 30, generator=g), "steps": torch.tensor(7)}, {"b": torch.randn(30, generator=g)}]


def test_clipping_bounds_the_update_norm_and_keeps_its_direction() -> None:
    reference, trained = _parts(0), _parts(1)
    norm = update_norm(reference, trained)
    (encoder, head), before = clip_update(reference, trained, 0.1 * norm)
    assert before == pytest.approx(norm, rel=1e-6)
    assert update_norm(reference, [encoder, head]) == pytest.approx(0.1 * norm, rel=1e-5)
    torch.testing.assert_close(encoder["w"] - reference[0]["w"], 0.1 * (trained[0]["w"] - reference[0]["w"]))
    assert encoder["steps"] is trained[0]["steps"]  # integer tensors are left alone
    short, _ = clip_update(reference, trained, 2 * norm)  # already within the bound: unchanged
    torch.testing.assert_close(short[0]["w"], trained[0]["w"], rtol=0, atol=0)
    same, zero = clip_update(reference, reference, 1.0)  # a zero update (Flower's clip would divide by it)
    assert zero == 0 and torch.equal(same[1]["b"], reference[1]["b"])


def test_noise_has_the_stated_std_from_fresh_randomness() -> None:
    assert noise_stdv(1.5, 2.0, 0.25) == pytest.approx(1.5 * 2.0 / 4)  # Flower's z * C / m for 4 equal shares
    zeros = [{"w": torch.zeros(200_000)}]
    np.random.seed(0)
    state = np.random.get_state()[1].copy()
    first, second = add_noise(zeros, 0.3)[0]["w"], add_noise(zeros, 0.3)[0]["w"]
    assert float(first.std()) == pytest.approx(0.3, rel=0.02) and abs(float(first.mean())) < 0.01
    assert not torch.equal(first, second)  # a known seed (the run's) does not fix the noise
    assert (np.random.get_state()[1] == state).all()  # the global generator is left as it was


def test_epsilon_falls_as_noise_grows_and_matches_the_gaussian_rdp_bound() -> None:
    values = [epsilon(z, 5, 1e-5) for z in (0.5, 1.0, 2.0, 4.0)]
    assert values == sorted(values, reverse=True) and values[-1] > 0
    assert epsilon(1.0, 5, 1e-5) == pytest.approx(12.30, abs=0.01)  # opacus 1.6, 5 rounds at sampling rate 1
    assert epsilon(1.0, 0, 1e-5) == 0.0
    # Mironov's conversion of the Gaussian's RDP (5 alpha / 2 z^2): opacus's tighter one stays below it
    mironov = min(5 * a / 2 + math.log(1e5) / (a - 1) for a in np.linspace(1.01, 64, 20000))
    assert 0.8 * mironov < values[1] <= mironov


def test_server_side_dp_clips_each_update_and_noises_the_mean() -> None:
    """Two members' long (distinct) updates: the coordinator clips each to C and adds noise of std z C / 2 to their
    mean (two equal shares)."""
    settings = TrainSettings(update_factor=0, dp=DpSettings(mode="server", clipping_norm=0.5, noise_multiplier=0.2))
    encoder, head = {"w": torch.zeros(100_000)}, {"b": torch.zeros(10)}
    group = Group("g", "s", "t", "classification", ["a", "b"], ["m1", "m2"])
    run = GroupTraining(group, SimpleNamespace(task_type="classification"), encoder, head, {"m1": 5, "m2": 5},
                        settings)
    steps = [torch.ones(100_000), 2 * torch.arange(100_000).remainder(2).float()]  # norms 316.2 and 447.2
    updates = [Update(m, {"w": step}, {"b": torch.zeros(10)}, {"train_loss": 1.0})
               for m, step in zip(("m1", "m2"), steps)]
    record = run.apply(1, 1e-3, updates)
    assert record["dp"]["update_norms"] == {"m1": pytest.approx(316.228, rel=1e-4),
                                            "m2": pytest.approx(447.214, rel=1e-4)}
    assert record["dp"]["noise_stdv"] == pytest.approx(0.2 * 0.5 / 2)
    noise = run.encoder["w"] - sum(s * 0.5 / s.norm() for s in steps) / 2  # minus the mean of the clipped updates
    assert abs(float(noise.mean())) < 1e-3 and float(noise.std()) == pytest.approx(0.05, rel=0.02)
    assert run.privacy()["epsilon"] == pytest.approx(epsilon(0.2, 1, 1e-5))


@pytest.mark.parametrize("flags, field", [(["--dp-clipping-norm", "-1"], "train.dp.clipping_norm"),
                                          (["--dp-noise-multiplier", "-0.5"], "train.dp.noise_multiplier"),
                                          (["--dp-mode", "local"], "train.dp.mode"),
                                          (["--dp-mode", "server", "--overrides", "train.aggregation=median"],
                                           "train.aggregation")])
def test_bad_dp_settings_are_one_line_naming_the_field(capsys, tmp_path: Path, flags: list[str], field: str) -> None:
    assert main(["run", "--state", str(tmp_path), *flags]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and field in lines[0], lines
    assert not (tmp_path / "flwr-home").exists()  # refused before Flower


def _unclipped(reply):
    """A train reply whose encoder moved far (10 per weight) from anything the member could send clipped."""
    state = reply.content.array_records["encoder"].to_torch_state_dict()
    reply.content["encoder"] = ArrayRecord({k: v + 10.0 if v.is_floating_point() else v for k, v in state.items()})
    return reply


def test_a_run_with_client_side_dp_reports_epsilon_per_group_and_refuses_an_unclipped_update(tmp_path: Path) -> None:
    dp = "train.dp.mode=client train.dp.clipping_norm=0.01 train.dp.noise_multiplier=2"
    faults = tamper_replies("train.specialist", "south_s2", _unclipped)
    run_dir = run_experiment(InProcessGrid(simulated_nodes(2), faults=faults),
                             tiny_run_config(tmp_path, dp), flower_run_id=1)
    train = json.loads((run_dir / "phases" / "train.json").read_text())
    refused = [(f["round"], f["institution"]) for f in train["failures"] if "train.dp.clipping_norm" in f["reason"]]
    assert refused == [(1, "south_s2"), (2, "south_s2")]
    expected = epsilon(2.0, 2, 1e-5)
    for name, group in train["groups"].items():
        assert group["dp"]["epsilon"] == pytest.approx(expected) and group["dp"]["rounds"] == 2
        assert group["metrics"]["dp_epsilon"] == pytest.approx(expected)
        assert [h["dp"]["noise_stdv"] for h in group["history"]] == [pytest.approx(2 * 0.01)] * 2  # one share each
        card = SpecialistCard.from_json((run_dir / "specialists" / name / "card.json").read_text())
        assert card.extra["dp"]["mode"] == "client" and "dp" not in json.loads(card.shared().to_json()).get("extra", {})
    report = (run_dir / "report.md").read_text()
    assert f"clip 0.01, noise 2, epsilon {expected:.3g} at delta 1e-05, client-side clipping" in report
    summary = json.loads((run_dir / "report.json").read_text())
    assert summary["groups"]["sentinel2_l2a-scene"]["dp"]["epsilon"] == pytest.approx(expected)
