"""A tiny simulated federation for in-process pipeline tests: three institutions of the tiny world
(north_s2 + south_s2 form a Sentinel-2 FedAvg group, city_aerial trains alone), every phase cheap."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def simulated_nodes(n: int) -> dict[int, dict[str, Any]]:
    """Node configs of ``n`` simulated SuperNodes (ids 100, 101, ...)."""
    return {100 + p: {"partition-id": p, "num-partitions": n} for p in range(n)}


def tiny_run_config(out: Path, extra: str = "", run_name: str = "fl") -> dict[str, str]:
    """Flower run config of the tiny federation writing to ``out``; ``extra`` adds Hydra overrides."""
    overrides = (f"output_dir={out} world=tiny ~institutions world.tiles_per_institution=4 "
                 "+institutions.north_s2={sensor:sentinel2_l2a,task:scene} "
                 "+institutions.south_s2={sensor:sentinel2_l2a,task:scene} "
                 "+institutions.city_aerial={sensor:aerial_rgbn,task:landcover} world.aerial_factor=2 "
                 "train.rounds=2 train.max_steps=1 train.batch_size=2 federation.reply_timeout_s=5 "
                 "proxy.tiles_per_institution=6 proxy.batch_size=8 distill.epochs=1 distill.stem_fit_steps=5 prune.permutations=4 " + extra)
    return {"experiment": "default", "overrides": overrides, "run-name": run_name}


def tamper_replies(message_type: str, institution: str, tamper):
    """An :class:`InProcessGrid` ``faults`` hook: ``tamper(reply)`` on the replies to ``message_type``
    requests for ``institution``, the others untouched."""

    def faults(message):
        name = message.content.config_records.get("institution", {}).get("institution")
        if message.metadata.message_type != message_type or name != institution:
            return None
        return lambda reply: (tamper(reply), reply)[1]

    return faults
