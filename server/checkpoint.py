"""A run's folder and checkpoint: which phases finished, with their results, so a rerun resumes.

Layout of ``<output_dir>/<run-name>/``::

    config.yaml          the resolved experiment config the run was started with
    checkpoint.json      {"version", "run", "experiment", "config_sha256", "flower_runs": [ids],
                          "phases": {name: {"status": "done", "started", "finished", "seconds",
                                            "result": "phases/<name>.json"}}}
    phases/<name>.json   each finished phase's JSON result

Every file is written atomically (temporary file + rename); a phase's result is written before the
checkpoint that names it, so a crash never leaves the checkpoint pointing at a missing result.
Reopening a run with a different resolved config is refused: its finished phases would not match.
"""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from geodata.files import atomic_write_text
from geodata.errors import InputError

__all__ = ["RunCheckpoint", "CHECKPOINT_VERSION"]

log = logging.getLogger(__name__)
CHECKPOINT_VERSION = 1


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunCheckpoint:
    """The checkpoint of one run folder (see module docstring)."""

    def __init__(self, run_dir: Path, state: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.state = state

    @property
    def path(self) -> Path:
        return self.run_dir / "checkpoint.json"

    @classmethod
    def open(cls, run_dir: str | Path, experiment: str, config_yaml: str) -> "RunCheckpoint":
        """Resume the run in ``run_dir`` or start it; refuses a run folder made with another config."""
        run_dir = Path(run_dir)
        digest = hashlib.sha256(config_yaml.encode()).hexdigest()
        path = run_dir / "checkpoint.json"
        if path.exists():
            try:
                state = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}: not valid JSON ({exc}); remove it or pick another run-name") from None
            if state.get("version") != CHECKPOINT_VERSION:
                raise InputError(f"{path}: checkpoint version {state.get('version')!r}, expected {CHECKPOINT_VERSION}")
            if state.get("config_sha256") != digest:
                raise InputError(
                    f"{run_dir}: this run was started with another config (see its config.yaml); "
                    "pick another run-name to start a new run"
                )
            log.info("Resuming run %s (finished phases: %s)", run_dir.name, ", ".join(state["phases"]) or "none")
            return cls(run_dir, state)
        atomic_write_text(run_dir / "config.yaml", config_yaml)
        state = {
            "version": CHECKPOINT_VERSION,
            "run": run_dir.name,
            "experiment": experiment,
            "config_sha256": digest,
            "created": _now(),
            "flower_runs": [],
            "phases": {},
        }
        checkpoint = cls(run_dir, state)
        checkpoint._save()
        return checkpoint

    def _save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.state, indent=1))

    def add_flower_run(self, run_id: int) -> None:
        """Record the Flower run that is working on this run folder now."""
        if run_id not in self.state["flower_runs"]:
            self.state["flower_runs"].append(run_id)
            self._save()

    def is_done(self, phase: str) -> bool:
        return self.state["phases"].get(phase, {}).get("status") == "done"

    def done_after(self, phase: str, order: list[str]) -> list[str]:
        """Finished phases that come after ``phase`` in ``order``."""
        later = order[order.index(phase) + 1 :]
        return [name for name in later if self.is_done(name)]

    def result(self, phase: str) -> dict[str, Any]:
        """The stored result of a finished phase."""
        entry = self.state["phases"].get(phase)
        if entry is None:
            raise KeyError(f"{self.path}: phase {phase!r} has no result")
        return json.loads((self.run_dir / entry["result"]).read_text())

    def record(self, phase: str, result: dict[str, Any], started: str, seconds: float) -> None:
        """Store a finished phase's result, then mark it done."""
        relative = f"phases/{phase}.json"
        atomic_write_text(self.run_dir / relative, json.dumps(result, indent=1))
        self.state["phases"][phase] = {
            "status": "done",
            "started": started,
            "finished": _now(),
            "seconds": round(seconds, 3),
            "result": relative,
        }
        self._save()
