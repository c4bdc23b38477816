"""The federated FCMAE phase: a round's updates checked and averaged without Flower, and the phase in an
in-process federation (train starts from its result; 0 rounds: no phase)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as safetensors_state

from flower_harness import InProcessGrid
from pipeline.pretrain import METHOD, GroupPretraining
from pipeline.roster import Group, Member
from pipeline.settings import PretrainSettings, RunSettings, TrainSettings, load_experiment
from server.phases.report import _pretrain
from server.run import run_experiment
from specialists.card import SpecialistCard
from wire.messages import DataSummary
from tiny_run import simulated_nodes, tamper_replies, tiny_run_config

BANDS = ["RED", "GREEN", "BLUE", "NIR"]


def _pair() -> GroupPretraining:
    members = [Member(name, "aerial_rgbn", "landcover", 100 + i, True, {}, DataSummary(
        name, "segmentation", ["x", "y"], BANDS, {"train": n, "val": 2}, [0.3] * 4, [0.1] * 4, "manifest.json"), BANDS)
        for i, (name, n) in enumerate((("a", 6), ("b", 2)))]
    group = Group("aerial_rgbn-landcover", "aerial_rgbn", "landcover", "segmentation", ["x", "y"], ["a", "b"])
    return GroupPretraining.start(group, members, TrainSettings(init="random"), PretrainSettings(rounds=2), seed=0,
                                   tolerance_nm=50.0)


def _moved(state: dict[str, torch.Tensor], by: float) -> dict[str, torch.Tensor]:
    return {k: v + by if v.is_floating_point() else v.clone() for k, v in state.items()}


def test_a_round_checks_every_update_and_averages_encoder_and_decoder() -> None:
    run = _pair()
    encoder, decoder = run.encoder, run.decoder
    first = next(iter(encoder))
    wrong_shape = {**encoder, first: encoder[first][:1]}
    with pytest.raises(ValueError, match=f"member b encoder: tensor '{first}' is"):
        run.check(wrong_shape, decoder, "member b")
    nan = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in decoder.items()}
    with pytest.raises(ValueError, match="member b decoder: tensor .* has non-finite values"):
        run.check(encoder, nan, "member b")
    with pytest.raises(ValueError, match="unexpected"):
        run.check({**encoder, "extra": torch.zeros(1)}, decoder, "member b")
    updates = [("a", *run.check(_moved(encoder, 1.0), _moved(decoder, 1.0), "a"), {"loss": 0.5, "num_examples": 6}),
               ("b", *run.check(_moved(encoder, 3.0), _moved(decoder, 3.0), "b"), {"loss": 0.7, "num_examples": 2})]
    record = run.apply(1, 1e-3, updates)
    # capped shares (train.max_weight_share 0.5): the larger member's 3/4 capped at 1/2
    assert record["shares"] == {"a": 0.5, "b": 0.5} and record["refused"] == {} and run.rounds_done == 1
    assert torch.allclose(run.encoder[first], encoder[first] + 2.0)
    assert all(torch.allclose(run.decoder[k], v + 2.0) for k, v in decoder.items() if v.is_floating_point())
    data, sha256 = run.encoder_bytes()
    assert hashlib.sha256(data).hexdigest() == sha256
    assert all(torch.equal(v, run.encoder[k]) for k, v in safetensors_state(data).items())
    record = run.record(sha256)
    assert record["method"] == METHOD and record["rounds"] == 2 and record["rounds_applied"] == 1


def test_a_round_with_too_few_valid_updates_keeps_the_weights() -> None:
    run = _pair()
    before = run.encoder
    record = run.apply(1, 1e-3, [])
    assert "train.min_replies" in record["skipped"] and run.rounds_done == 0 and run.encoder is before


def test_settings_name_the_field_out_of_range() -> None:
    for field, value in (("rounds", -1), ("mask_ratio", 1.0), ("local_epochs", 0), ("patch", 0)):
        with pytest.raises(ValueError, match=f"pretrain.{field} must be"):
            load_experiment(RunSettings("quick", (f"pretrain.{field}={value}",), "r"))


def test_pretrain_phase_starts_train_from_its_encoder_and_zero_rounds_skip_it(tmp_path: Path) -> None:
    train_starts = {}  # institution -> the encoder of its first train.specialist request

    def faults(message):
        kind = message.metadata.message_type
        if kind == "train.specialist":
            name = message.content.config_records["institution"]["institution"]
            train_starts.setdefault(name, message.content.array_records["encoder"].to_torch_state_dict())
            return None
        return bad_decoder(message)

    def shrink(reply):  # south_s2's pretrain update comes back with a decoder of another shape
        state = reply.content.array_records["decoder"].to_torch_state_dict()
        key = next(iter(state))
        state[key] = state[key][:1]
        reply.content.array_records["decoder"] = type(reply.content.array_records["decoder"])(state)

    bad_decoder = tamper_replies("train.pretrain", "south_s2", shrink)
    extra = "stop_after=train pretrain.rounds=1 pretrain.max_steps=1 pretrain.batch_size=2"
    run_dir = run_experiment(InProcessGrid(simulated_nodes(2), faults=faults), tiny_run_config(tmp_path, extra),
                             flower_run_id=1)
    result = json.loads((run_dir / "phases" / "pretrain.json").read_text())
    assert [(f["round"], f["institution"]) for f in result["failures"]] == [(1, "south_s2")]
    assert "decoder" in result["failures"][0]["reason"]
    for name, group in result["groups"].items():
        assert group["rounds_applied"] == 1 and group["method"] == METHOD
        data = (run_dir / group["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == group["sha256"]
        card = SpecialistCard.from_json((run_dir / "specialists" / name / "card.json").read_text())
        assert card.extra["pretrain"]["sha256"] == group["sha256"] and card.extra["pretrain"]["rounds"] == 1
        pretrained = safetensors_state(data)
        for member in card.institutions:  # round 1 of train sends the pretrained encoder
            assert all(torch.equal(v, pretrained[k]) for k, v in train_starts[member].items())
    assert sorted(result["groups"]) == ["aerial_rgbn-landcover", "sentinel2_l2a-scene"]
    assert result["groups"]["sentinel2_l2a-scene"]["history"][0]["shares"] == {"north_s2": 1.0}
    section = _pretrain(result)
    assert section[0] == "## Pretrain (federated FCMAE per group)"
    assert any(line.startswith("| sentinel2_l2a-scene | 1 | ") for line in section)

    sent = []
    config = tiny_run_config(tmp_path, "stop_after=train ~institutions.city_aerial", run_name="none")
    grid = InProcessGrid(simulated_nodes(1), faults=lambda m: sent.append(m.metadata.message_type))
    run_dir = run_experiment(grid, config, flower_run_id=2)
    assert json.loads((run_dir / "phases" / "pretrain.json").read_text())["skipped"] == "pretrain.rounds is 0"
    assert "train.pretrain" not in sent and not (run_dir / "pretrained").exists()
    card = SpecialistCard.from_json((run_dir / "specialists" / "sentinel2_l2a-scene" / "card.json").read_text())
    assert "pretrain" not in card.extra


def test_a_sealed_group_card_names_the_file_its_keepers_write(tmp_path: Path) -> None:
    """Issue 22: the coordinator seals a group's card from the final tensors, no specialist rebuilt; a keeper's
    store writes exactly the file that hash names, serialised once, and loads it back checked."""
    from clients.institution import InstitutionSpec
    from clients.store import keep_specialist, kept_specialist
    from pipeline.fedavg import GroupTraining
    from specialists import Specialist

    pretraining = _pair()
    members = [Member(name, "aerial_rgbn", "landcover", 100 + i, True, {}, DataSummary(
        name, "segmentation", ["x", "y"], BANDS, {"train": 4, "val": 2}, [0.3] * 4, [0.1] * 4, "manifest.json"), BANDS)
        for i, name in enumerate(("a", "b"))]
    run = GroupTraining.start(pretraining.group, members, TrainSettings(init="random"), seed=0, tolerance_nm=50.0)
    run.encoder = _moved(run.encoder, 0.01)  # the weights after some rounds
    run.seal()
    assert len(run.card.weights_sha256) == 64
    specialist = Specialist.from_card(SpecialistCard.from_json(run.card.shared().to_json()))
    specialist.encoder.load_state_dict(run.encoder, strict=True)
    spec = InstitutionSpec("a", "aerial_rgbn", "landcover", store=str(tmp_path / "store"))
    folder = keep_specialist(spec, specialist)
    assert folder.name == run.card.weights_sha256
    assert hashlib.sha256((folder / "weights.safetensors").read_bytes()).hexdigest() == run.card.weights_sha256
    kept = kept_specialist(spec, run.card.weights_sha256)
    assert kept.card.num_params == run.card.num_params
    assert all(torch.equal(v, run.encoder[k]) for k, v in kept.encoder.state_dict().items())
