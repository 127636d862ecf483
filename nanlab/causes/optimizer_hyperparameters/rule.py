"""Optimizer hyperparameters: the optimizer's own settings (``OptimizerFacts``) make the update grow by a constant
factor per step, whatever the data and the model.

Read from the optimizer facts of the failing step, in the shared vocabulary (each framework maps its names: torch's
``lr`` and Keras' ``learning_rate``, ``weight_decay``, ``momentum``, Adam's ``betas``/``beta_1, beta_2``):

- ``decay_per_step = lr * weight_decay``: decoupled weight decay (AdamW; every Keras optimizer; and plain SGD, whose
  L2 term ``lr * wd * w`` is the same product) multiplies each weight by ``1 - lr * wd`` per step. Past 2 its size
  is above 1: the weights flip sign and grow geometrically, a NaN by itself. From 1 to 2 the weights flip sign (or
  are zeroed) every step: a setting that cannot train, named with less confidence since it does not diverge alone;
- ``momentum >= 1``: the velocity never decays (at 1, the sum of every past gradient; above, ``momentum^t``);
- ``betas`` at or above 1: a moving average that never forgets, whose bias correction ``1 - beta^t`` is 0 (a
  division by zero) or negative (the square root of a negative number for beta2).

One limit: PyTorch's Adam, RMSprop and Adagrad (without ``decoupled_weight_decay``) add ``wd * w`` to the gradient,
which their adaptive denominator rescales, so there ``lr * wd`` is no per-step factor. ``OptimizerFacts`` does not
say whether the decay was decoupled (Keras' ``Adam`` decouples it, torch's does not, under the same ``kind``), so
the reason names the optimizers for which the factor holds; where the facts carry ``decoupled_weight_decay`` and it
is False (a coupled L2 term), the weight-decay clause stays silent.

These are direct evidence, read from the optimizer itself, so they rank above ``high-learning-rate`` (the gradient
norm's growth, a trend that any divergence shows) and above the op where the overflow finally landed. The phase
``data`` is left out: no optimizer setting makes a batch bad.

A schedule whose rate keeps growing shows only in the trajectory of the learning rate: every watch records the rate
of each healthy step (``WatchHistory.learning_rates``: torch's first parameter group's ``lr``, a Keras optimizer's
``learning_rate`` with its schedule applied) and the report carries them as ``learning_rates``. A rate that only
grew, by ``GROWING_RATE`` times or more, and was still growing at the NaN is named, above the gradient norm's trend
(which it names as the runner-up); a rate that came down at some point (a warmup that ended in a decay, a cycle) or
had reached its plateau is not: the rate the run held is then high-learning-rate's evidence.
"""
import math

from nanlab.causes.optimizer_hyperparameters import CAUSE
from nanlab.diagnosis import DIRECT, LOCATED, TREND, Verdict
from nanlab.watching.vocabulary import Phase

DIVERGES = DIRECT + 0.05  # a setting that makes the update grow geometrically by itself
CANNOT_TRAIN = LOCATED  # a setting that cannot train (weights zeroed or sign-flipped each step, velocity never decays)
GROWING_SCHEDULE = TREND + 0.1  # the rate grew step after step up to the NaN: above the gradient norm's trend alone
GROWING_RATE = 10.0  # how many times the recorded learning rate must have grown
MIN_RATES = 3


def diagnose(report) -> Verdict | None:
    if report.phase == Phase.DATA:
        return None
    facts = report.optimizer
    verdicts = [_weight_decay(facts), _momentum(facts), _betas(facts)] if facts is not None else []
    verdicts.append(_schedule(report))
    verdicts = [verdict for verdict in verdicts if verdict is not None]
    return max(verdicts, key=lambda verdict: verdict.specificity) if verdicts else None


def _name(facts) -> str:
    return facts.kind or "the optimizer"


def _weight_decay(facts) -> Verdict | None:
    decay = facts.decay_per_step
    if decay is None or decay < 1 or getattr(facts, "decoupled_weight_decay", None) is False:
        return None
    factor = 1.0 - decay
    product = (f"{_name(facts)} has lr * weight_decay = {facts.learning_rate:g} * {facts.weight_decay:g} = "
               f"{decay:.3g}, and decoupled weight decay (AdamW, Keras' weight_decay, plain SGD's L2 term alike) "
               f"multiplies every weight by 1 - {decay:.3g} = {factor:.3g} per step")
    if abs(factor) > 1:
        return Verdict(CAUSE.id, DIVERGES, f"{product}: the weights flip sign and grow |{factor:.3g}|^t, "
                       "geometrically, whatever the gradients (gradient clipping cannot stop it: the decay is not "
                       "part of the gradient); keep lr * weight_decay far below 1 (weight_decay ~1e-2 for AdamW)",
                       ("optimizer", "phase"))
    return Verdict(CAUSE.id, CANNOT_TRAIN, f"{product}: each step removes the whole weight (or more), so the weights "
                   "are zeroed or flip sign every step and cannot learn; keep lr * weight_decay far below 1",
                   ("optimizer", "phase"))


def _momentum(facts) -> Verdict | None:
    momentum = facts.momentum
    if momentum is None or momentum < 1:
        return None
    if momentum > 1:
        return Verdict(CAUSE.id, DIVERGES, f"{_name(facts)}'s momentum is {momentum:g} > 1: the velocity v = "
                       f"{momentum:g} * v + g grows like {momentum:g}^t, and the weights with it; use momentum < 1 "
                       "(0.9)", ("optimizer", "phase"))
    return Verdict(CAUSE.id, CANNOT_TRAIN, f"{_name(facts)}'s momentum is 1: the velocity never decays, it is the sum "
                   "of every past gradient, so each step moves the weights further than the last; use momentum < 1 "
                   "(0.9)", ("optimizer", "phase"))


def _betas(facts) -> Verdict | None:
    if facts.betas is None:
        return None
    beta_1, beta_2 = facts.betas
    bad = [f"beta_{index} = {beta:g}" for index, beta in ((1, beta_1), (2, beta_2)) if beta is not None and beta >= 1]
    if not bad:
        return None
    return Verdict(CAUSE.id, DIVERGES, f"{_name(facts)}'s {' and '.join(bad)}: a moving average's factor must be below "
                   "1; at 1 the bias correction 1 - beta^t is 0 (a division by zero), above 1 it is negative (the "
                   "square root of a negative number for beta_2)", ("optimizer", "phase"))


def _schedule(report) -> Verdict | None:
    rates = [rate for rate in report.learning_rates if rate is not None and math.isfinite(rate)]
    if len(rates) < MIN_RATES or rates[0] <= 0 or rates[-1] < GROWING_RATE * rates[0]:
        return None
    if any(later < earlier for earlier, later in zip(rates, rates[1:])):
        return None  # a warmup that ended, a cycle: the rate came down at some point
    if rates[-1] <= rates[-2]:
        return None  # a warmup that reached its plateau: the rate the run held failed, not a rate still growing
    return Verdict(CAUSE.id, GROWING_SCHEDULE, f"the learning rate grew {rates[-1] / rates[0]:.3g}x over the "
                   f"{len(rates)} steps before the NaN ({rates[0]:.3g} -> {rates[-1]:.3g}), never came down and was "
                   "still growing: the schedule raised it past every rate this model can take (a warmup with no "
                   "end, or to too high a peak); end the warmup at a rate that trains, then decay",
                   ("learning_rates", "phase"))
