"""Faults and hostile input at the coordinator, in one process: tampered uploads at enrolment are
refused before they touch the registry (another keeper delivers), a coordinator killed after enrol
resumes without retraining and with a byte-identical registry, a node failing at evaluation is
reported and the run completes, a node silent past the reply timeout is not asked again in the run."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

import server.run
from flower_harness import InProcessGrid
from fusion import Registry
from server.phases import PHASES, Phase
from server.run import run_experiment
from specialists.encoder import build_encoder
from specialists.io import bytes_tensor, tensor_bytes
from tiny_run import simulated_nodes, tamper_replies, tiny_run_config

PICKLE_RAN = []


class _Payload:
    def __reduce__(self):
        return (PICKLE_RAN.append, ("the pickle ran",))


def _retamper(reply, data: bytes, **card_changes) -> None:
    """Put ``data`` as the uploaded weights and make the card claim its hash (what a hostile sender does)."""
    card = json.loads(reply.content.config_records["card"]["json"])
    card.update(weights_sha256=hashlib.sha256(data).hexdigest(), **card_changes)
    reply.content.config_records["card"] = ConfigRecord({"json": json.dumps(card)})
    reply.content.array_records["weights"] = ArrayRecord({"safetensors": bytes_tensor(data)})


def _weights(reply) -> dict[str, torch.Tensor]:
    return load_safetensors_bytes(tensor_bytes(reply.content.array_records["weights"].to_torch_state_dict()
                                               ["safetensors"], "test"))


def _nan(reply):
    state = _weights(reply)
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = torch.full_like(state[first], float("nan"))
    _retamper(reply, save_safetensors_bytes(state))


def _other_variant(reply):
    _retamper(reply, save_safetensors_bytes(build_encoder("convnextv2_femto", in_chans=12).state_dict()))


def _foreign_bands(reply):
    state = _weights(reply)
    _retamper(reply, save_safetensors_bytes(state), bands=["VV", "VH"] + [f"B0{i}" for i in range(1, 9)] + ["B11", "B12"])


def _hash_mismatch(reply):
    state = _weights(reply)
    first = next(k for k, v in state.items() if v.is_floating_point())
    state[first] = state[first] + 0.01
    reply.content.array_records["weights"] = ArrayRecord({"safetensors": bytes_tensor(save_safetensors_bytes(state))})


def _oversized(reply):
    _retamper(reply, tensor_bytes(reply.content.array_records["weights"].to_torch_state_dict()["safetensors"], "t")
              + bytes(21 * 2**20))


def _pickle(reply):
    buffer = io.BytesIO()
    torch.save({"weights": _Payload()}, buffer)
    _retamper(reply, buffer.getvalue())


CASES = {
    "nan": (_nan, "NaN or infinite"),
    "other_variant": (_other_variant, "variant 'convnextv2_atto' needs"),
    "foreign_bands": (_foreign_bands, "are not bands of sensor"),
    "hash_mismatch": (_hash_mismatch, "does not match field 'weights_sha256'"),
    "oversized": (_oversized, "exceeds the limit"),
    "pickle": (_pickle, "not a safetensors file"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_tampered_upload_is_refused_and_another_keeper_delivers(tmp_path: Path, case: str) -> None:
    tamper, reason = CASES[case]

    faults = tamper_replies("query.enrol", "north_s2", tamper)
    config = tiny_run_config(tmp_path, "stop_after=enrol enrol.max_upload_mb=20")
    run_dir = run_experiment(InProcessGrid(simulated_nodes(2), faults=faults), config, flower_run_id=1)
    enrol = json.loads((run_dir / "phases" / "enrol.json").read_text())
    assert [(f["institution"], f["group"]) for f in enrol["failures"]] == [("north_s2", "sentinel2_l2a-scene")]
    assert reason in enrol["failures"][0]["reason"]
    assert enrol["enrolled"]["sentinel2_l2a-scene"]["holder"] == "south_s2"  # the other keeper delivered
    registry = Registry(run_dir / "registry")
    assert registry.load("sentinel2_l2a-scene").card.weights_sha256 == enrol["enrolled"]["sentinel2_l2a-scene"][
        "weights_sha256"]
    assert PICKLE_RAN == []


def test_coordinator_killed_after_enrol_resumes_without_retraining(tmp_path: Path, monkeypatch) -> None:
    def killed(ctx):
        raise KeyboardInterrupt("coordinator killed")

    crashing = tuple(Phase(p.name, killed) if p.name == "distill" else p for p in PHASES)
    monkeypatch.setattr(server.run, "PHASES", crashing)
    config = tiny_run_config(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(InProcessGrid(simulated_nodes(2)), config, flower_run_id=1)
    run_dir = tmp_path / "fl"
    before = {p.relative_to(run_dir): p.read_bytes() for p in (run_dir / "registry").rglob("*") if p.is_file()}
    assert any(p.name == "weights.safetensors" for p in before)

    monkeypatch.setattr(server.run, "PHASES", PHASES)
    sent = []

    def faults(message):
        sent.append(message.metadata.message_type)
        institution = message.content.config_records.get("institution", {}).get("institution")
        return "out of memory" if message.metadata.message_type == "evaluate.fusion" and institution == "city_aerial" \
            else None

    run_experiment(InProcessGrid(simulated_nodes(2), faults=faults), config, flower_run_id=2)
    assert "train.specialist" not in sent and "query.enrol" not in sent  # nothing retrained or re-enrolled
    after = {p.relative_to(run_dir): p.read_bytes() for p in (run_dir / "registry").rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if k.parts[1] != "feature_stats"} == before  # stats: added by distill
    evaluation = json.loads((run_dir / "phases" / "evaluate.json").read_text())
    assert sorted(evaluation["institutions"]) == ["north_s2", "south_s2"]
    report = json.loads((run_dir / "report.json").read_text())
    assert {"phase": "evaluate", "institution": "city_aerial"}.items() <= report["failures"][-1].items()
    assert "out of memory" in (run_dir / "report.md").read_text()


def test_node_silent_past_the_timeout_is_not_asked_again_in_the_run(tmp_path: Path) -> None:
    sent: list[tuple[str, int]] = []

    def faults(message):
        sent.append((message.metadata.message_type, message.metadata.dst_node_id))
        institution = message.content.config_records.get("institution", {}).get("institution")
        return "drop" if message.metadata.message_type == "train.specialist" and institution == "south_s2" else None

    config = tiny_run_config(tmp_path, "stop_after=enrol federation.reply_timeout_s=1")
    run_dir = run_experiment(InProcessGrid(simulated_nodes(2), faults=faults), config, flower_run_id=1)
    silent = json.loads((run_dir / "phases" / "discover.json").read_text())["institutions"]["south_s2"]["node_id"]
    assert [m for m in sent if m[1] == silent][-1] == ("train.specialist", silent)  # asked once, never again
    trained = json.loads((run_dir / "phases" / "train.json").read_text())
    assert [(f["round"], f["reason"]) for f in trained["failures"] if f["institution"] == "south_s2"] == [
        (1, "no reply within 1 s"), (2, "skipped: no reply within 1 s in phase train"),
        ("final", "skipped: no reply within 1 s in phase train")]
    group = trained["groups"]["sentinel2_l2a-scene"]
    assert sorted(group["per_institution"]) == ["north_s2"] and group["rounds_applied"] == 2
    assert Registry(run_dir / "registry").card("sentinel2_l2a-scene").weights_sha256 == group["weights_sha256"]

    sent.clear()  # a resumed run (a new Flower run) asks the node again
    run_experiment(InProcessGrid(simulated_nodes(2), faults=faults), config, flower_run_id=2)
    assert ("query.identify", silent) in sent
