"""The test lanes of ``tests/conftest.py`` as this session collected them."""

import pytest


def test_flower_tests_run_on_one_worker_in_turn(request: pytest.FixtureRequest) -> None:
    """Every flower test of the session is in xdist group ``flower``; under ``--dist loadgroup`` (``addopts``)
    it also carries xdist's group suffix, so the real deployments never run beside each other (pytest 9.2 with
    pytest-xdist 3.8 drops the suffix silently: ``pyproject.toml`` pins pytest below 9.2)."""
    flower = [item for item in request.session.items if item.get_closest_marker("flower")]
    assert all(item.get_closest_marker("xdist_group").args == ("flower",) for item in flower)
    if getattr(request.config.option, "loadgroup", False):
        lost = [item.nodeid for item in flower if not item.nodeid.endswith("@flower")]
        assert not lost, f"xdist_group not applied to {lost}: pytest-xdist's loadgroup does not work with this pytest"
