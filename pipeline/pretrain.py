"""A group's encoder pretrained by federated FCMAE (:mod:`specialists.fcmae`), without Flower: the starting
encoder (the one phase *train* would start from) and a seeded decoder, each round's settings, checked
updates screened and aggregated by :func:`pipeline.fedavg.combine` (the same rules as a training round), and
the result as safetensors bytes. The caller moves the weights to the members and back."""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Sequence

import torch
from safetensors.torch import save as safetensors_bytes

from pipeline.fedavg import GroupTraining, State, check_state, combine, join_states, split_states
from pipeline.roster import Group, Member
from pipeline.settings import PretrainSettings, TrainSettings
from specialists.card import SpecialistCard
from specialists.fcmae import Fcmae, FcmaeConfig, FcmaeOptim
from specialists.model import Specialist

__all__ = ["METHOD", "GroupPretraining", "pretrain_config"]

log = logging.getLogger(__name__)

METHOD = "fcmae federated"
"""What a card's ``extra["pretrain"]["method"]`` says of a federated FCMAE start."""


def pretrain_config(settings: PretrainSettings, seed: int, round_index: int) -> FcmaeConfig:
    """What every member pretrains with in round ``round_index`` (1-based): ``local_epochs`` at ``lr``
    decayed by a cosine over the rounds."""
    lr = settings.lr * 0.5 * (1 + math.cos(math.pi * (round_index - 1) / settings.rounds))
    shared = {f.name: getattr(settings, f.name) for f in fields(FcmaeOptim)}
    return FcmaeConfig(**{**shared, "lr": lr}, epochs=settings.local_epochs, seed=seed * 1000 + round_index)


@dataclass
class GroupPretraining:
    """The global encoder and decoder of one group's federated FCMAE across rounds."""

    group: Group
    card: SpecialistCard
    encoder: State
    decoder: State
    train_counts: dict[str, int]  # member -> declared train tiles (the FedAvg weights, capped)
    train: TrainSettings  # the group's robustness settings
    settings: PretrainSettings
    history: list[dict[str, Any]] = field(default_factory=list)
    rounds_done: int = 0

    @classmethod
    def start(cls, group: Group, members: Sequence[Member], train: TrainSettings, settings: PretrainSettings,
              seed: int, *, tolerance_nm: float) -> "GroupPretraining":
        """Phase *train*'s card and starting encoder (``train.init``) and a seeded FCMAE decoder."""
        start = GroupTraining.start(group, members, train, seed, tolerance_nm=tolerance_nm)
        specialist = Specialist.from_card(start.card)
        specialist.encoder.load_state_dict(start.encoder, strict=True)
        torch.manual_seed(seed)
        decoder = Fcmae(specialist.encoder, start.card.num_bands, settings.patch).decoder
        return cls(group, start.card, start.encoder, {k: v.detach().clone() for k, v in decoder.state_dict().items()},
                   start.train_counts, train, settings)

    def check(self, encoder: State, decoder: State, source: str) -> tuple[State, State]:
        """``encoder`` and ``decoder`` if their tensors match the global state's (``ValueError`` naming ``source``)."""
        return check_state(self.encoder, encoder, f"{source} encoder"), check_state(self.decoder, decoder,
                                                                                   f"{source} decoder")

    def apply(self, round_index: int, lr: float, updates: Sequence[tuple[str, State, State, dict[str, float]]]
              ) -> dict[str, Any]:
        """Aggregate the checked ``updates`` (member, encoder, decoder, metrics) into the global state; the
        round's history record (``refused``: member -> reason)."""
        per_member = {member: metrics for member, _, _, metrics in updates}
        record: dict[str, Any] = {"round": round_index, "lr": lr, "institutions": per_member}
        state, outcome = combine(f"Group {self.group.name} pretrain round {round_index}",
                                 join_states(self.encoder, self.decoder),
                                 [(m, join_states(e, d)) for m, e, d, _ in updates], self.train_counts, self.train)
        record.update(outcome)
        if state is not None:
            self.encoder, self.decoder = split_states(state)
            self.rounds_done += 1
        self.history.append(record)
        log.info("Group %s pretrain round %d: masked-patch loss %s", self.group.name, round_index,
                 {m: round(x["loss"], 4) for m, x in per_member.items()})
        return record

    def encoder_bytes(self) -> tuple[bytes, str]:
        """The global encoder as safetensors bytes, and their sha256."""
        data = safetensors_bytes({k: v.contiguous() for k, v in self.encoder.items()})
        return data, hashlib.sha256(data).hexdigest()

    def record(self, sha256: str) -> dict[str, Any]:
        """What the card of a specialist started from the encoder (whose file has ``sha256``) records."""
        return {"method": METHOD, "rounds": self.settings.rounds, "rounds_applied": self.rounds_done,
                "sha256": sha256, "settings": asdict(self.settings)}
