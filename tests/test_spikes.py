"""The warning before the NaN: spikes in the loss and gradient norm, logged as they happen, in every framework."""
import logging
import math

import numpy as np
import pytest

import nanlab
from nanlab.frameworks import list_frameworks
from nanlab.seeding import seed_everything
from nanlab.watching import WatchPolicy
from nanlab.watching.spikes import WARMUP, SpikeDetector


def feed(detector, values):
    return [spike for step, value in enumerate(values) for spike in detector.observe(step, {"gradient norm": value})]


def test_a_noisy_falling_curve_has_no_spike_and_a_jump_is_one():
    rng = np.random.default_rng(0)
    curve = [float(v) for v in 2.0 * np.exp(-np.arange(300) / 100) * np.exp(rng.normal(0, 0.1, 300))]
    assert feed(SpikeDetector(6.0), curve) == []
    jumped = curve[:200] + [curve[199] * 50] + curve[201:]
    spikes = feed(SpikeDetector(6.0), jumped)
    assert [(s.step, s.signal) for s in spikes] == [(200, "gradient norm")] and spikes[0].z > 6
    assert "standard deviations above" in str(spikes[0])


def test_no_spike_is_called_during_warmup_or_on_values_without_a_log():
    assert feed(SpikeDetector(6.0), [1.0] * (WARMUP - 1) + [1e6]) == []
    assert feed(SpikeDetector(6.0), [1.0] * WARMUP + [0.0, math.nan, math.inf]) == []
    flat = feed(SpikeDetector(6.0), [1.0] * WARMUP + [1.03, 1.1])  # a flat window tolerates a few percent
    assert [s.step for s in flat] == [WARMUP + 1]


@pytest.mark.parametrize("threshold", [0, -1, True, "6"])
def test_the_threshold_is_checked(threshold):
    with pytest.raises(nanlab.NanlabError, match="spike_threshold must be a positive number"):
        WatchPolicy(spike_threshold=threshold)


def _installed(framework):
    try:
        framework.backend
    except nanlab.NanlabError:
        return False
    return True


@pytest.mark.parametrize("framework", [f for f in list_frameworks() if _installed(f)], ids=lambda f: f.name)
def test_the_watch_warns_before_the_nan_and_the_report_keeps_the_approach(framework, caplog):
    """Warming up to a rate that is too high: the gradient norm climbs for a while before the NaN."""
    seed_everything(0, framework.name)
    training = nanlab.get_cause("high-learning-rate").recipe(framework.name).warmup_to_broken_lr(seed=0, device="cpu")
    with caplog.at_level(logging.WARNING, logger="nanlab.watch"):
        with pytest.raises(nanlab.NonFiniteError) as raised:
            with nanlab.watch(training, spike_threshold=6.0) as watch:
                framework.loop.train(training, 200)
    report = raised.value.report
    spikes = watch.history.spikes
    assert spikes and all(spike.step < report.step for spike in spikes), "warned before the NaN"
    assert any("a NaN often follows such a jump" in record.getMessage() for record in caplog.records)
    assert report.spikes == [spike.to_dict() for spike in spikes]
    approach = report.approach(last=5)
    assert approach.startswith(f"The last 5 healthy steps before step {report.step}:")
    assert approach.count("gradient norm") >= 5 and "spike at step" in approach


@pytest.mark.parametrize("framework", [f for f in list_frameworks() if _installed(f)], ids=lambda f: f.name)
def test_a_healthy_run_raises_no_spike_warning_and_trains_identically(framework, caplog):
    cause = nanlab.get_cause("high-learning-rate")
    recipe = cause.recipe(framework.name)
    seed_everything(0, framework.name)
    plain = framework.loop.train(recipe.SETTINGS["lower-lr"](seed=0, device="cpu"), cause.steps)
    seed_everything(0, framework.name)
    training = recipe.SETTINGS["lower-lr"](seed=0, device="cpu")
    with caplog.at_level(logging.WARNING, logger="nanlab.watch"):
        with nanlab.watch(training, spike_threshold=6.0) as watch:
            watched = framework.loop.train(training, cause.steps)
    assert watch.history.spikes == [] and not caplog.records
    assert watched.losses == plain.losses
