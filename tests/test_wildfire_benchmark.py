"""``benchmarks/wildfire.py``'s baseline and scoring on the real wildfire-s2 events (the fine-tuned rows run
for an hour: the benchmark itself, not here)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "wildfire.py"


@pytest.fixture(scope="module")
def wildfire():
    spec = importlib.util.spec_from_file_location("wildfire_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pixel_logistic_regression_reproduces_the_issues_baseline(wildfire, shared_data):
    names = sorted(p.stem for p in (shared_data / "wildfire-s2" / "post_fire").glob("*.tif"))
    train, test = names[:wildfire.TRAIN_EVENTS], names[wildfire.TRAIN_EVENTS:]
    x, y = wildfire.scene_pixels(train)
    assert x.shape[1] == 5 and 0.05 < y.mean() < 0.95  # the events' 5 bands, read through the sensor YAML
    x_test, y_test = wildfire.scene_pixels(test)
    scored = wildfire.scores(wildfire.lr_probs(wildfire.fit_logistic(x, y), x_test), y_test, 0.5)
    assert abs(scored["precision"] - wildfire.LR_ISSUE["precision"]) < 0.03
    assert abs(scored["recall"] - wildfire.LR_ISSUE["recall"]) < 0.03


def test_operating_points_follow_their_rules(wildfire):
    rng = np.random.default_rng(0)
    truth = rng.random(4000) < 0.3
    prob = np.clip(truth * 0.35 + rng.random(4000) * 0.65, 0, 1)
    floor = 0.85
    first = wildfire.scores(prob, truth, wildfire.precision_threshold(prob, truth, floor))
    assert first["recall"] >= floor
    grid = np.round(np.arange(0.05, 0.96, 0.01), 2)
    rows = [wildfire.scores(prob, truth, t) for t in grid]
    assert first["precision"] == max(r["precision"] for r in rows if r["recall"] >= floor)
    assert wildfire.scores(prob, truth, wildfire.best_threshold(prob, truth))["f1"] == max(r["f1"] for r in rows)
