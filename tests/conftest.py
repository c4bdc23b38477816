"""Shared fixtures and the test lanes. The real data in ../shared/data is required: without it tests fail,
never skip.

Lanes (markers set here at collection from what a test, its fixtures and the test-suite helpers they
call refer to, so they mean what they say; by hand only where a test reaches Flower through a
subprocess or a loaded script): ``flower``: the test starts real Flower processes (``flwr run``, a
SuperLink, SuperNodes); ``federation``: it runs the coordinator in this process
(``server.run.run_experiment``, the ``InProcessGrid``); ``slow``: long single-process work, by hand.
Unmarked tests are unit tests: ``python -m pytest -m "not flower and not federation and not slow"``
is the fast lane.

The suite runs on two pytest-xdist workers (``addopts``): every ``flower`` test goes to one worker, in turn
(``xdist_group``: real deployments must not compete for ports, CPUs and timeouts), while the other worker
takes the rest; each worker's torch, and every process a test starts, uses one thread so the two share the
machine's cores instead of fighting for them (two-thread OpenMP processes beside a busy worker ran 5x slower).
"""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

LANES = {  # lane -> the names whose use puts a test in it
    "flower": {"flwr_run", "FlowerProcesses", "isolated_flower", "run_flwr", "flower_env"},
    "federation": {"run_experiment", "InProcessGrid"},
}


def _reaches(func: types.FunctionType, names: set[str], seen: set[int]) -> bool:
    """Whether ``func``, or a function of the test suite it names (transitively), refers to one of ``names``."""
    code = getattr(func, "__code__", None)
    if code is None or id(code) in seen:
        return False
    seen.add(id(code))
    referenced = set(code.co_names) | {n for c in code.co_consts if isinstance(c, types.CodeType) for n in c.co_names}
    if referenced & names:
        return True
    scope = getattr(func, "__globals__", {})
    return any(_reaches(scope[n], names, seen) for n in referenced
               if isinstance(scope.get(n), types.FunctionType) and "tests" in Path(scope[n].__code__.co_filename).parts)


def pytest_configure(config: pytest.Config) -> None:
    for lane, what in (("flower", "starts real Flower processes"), ("federation", "runs the coordinator in process"),
                       ("slow", "long single-process work")):
        config.addinivalue_line("markers", f"{lane}: {what} (tests/conftest.py)")
    if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
        torch.set_num_threads(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # and the processes tests start (CLI, Flower): no oversubscription


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        funcs = [getattr(item, "function", None)]
        info = getattr(item, "_fixtureinfo", None)
        if info is not None:
            funcs += [d.func for defs in info.name2fixturedefs.values() for d in defs]
        for lane, names in LANES.items():
            if any(_reaches(f, names, set()) for f in funcs if f is not None):
                item.add_marker(lane)
                break  # a Flower-process test is not counted again as in-process
        if item.get_closest_marker("flower"):  # by lane or by hand
            item.add_marker(pytest.mark.xdist_group("flower"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder (``/work/shared/data`` beside the repo); fails loudly when it is missing."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.fail(f"real test data not found at {SHARED_DATA}; it must sit beside the repository (see PREAMBLE)")
    return SHARED_DATA
