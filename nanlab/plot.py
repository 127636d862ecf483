"""Matplotlib figures of runs: loss with the first non-finite step marked, gradient norm on a log axis, and the
broken setting against every fix on one figure."""
from __future__ import annotations

import math
from typing import Sequence

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from nanlab.run import Run

BROKEN_COLOUR = "tab:red"


def _label(run: Run) -> str:
    if run.error:
        return f"{run.setting} (raised {run.error})"
    if run.first_nonfinite_step is not None:
        return f"{run.setting} (non-finite at step {run.first_nonfinite_step})"
    return run.setting


def _finite_points(values: Sequence[float], smooth: int = 1) -> tuple[list[int], list[float]]:
    """The finite values and their steps; with ``smooth > 1`` each value is the mean of the last ``smooth`` ones."""
    points = [(step, value) for step, value in enumerate(values) if math.isfinite(value)]
    steps, finite = [step for step, _ in points], [value for _, value in points]
    if smooth > 1:
        finite = [sum(finite[max(0, i + 1 - smooth):i + 1]) / min(i + 1, smooth) for i in range(len(finite))]
    return steps, finite


def _mark_nonfinite(ax: Axes, run: Run, colour: str) -> None:
    if run.first_nonfinite_step is not None:
        ax.axvline(run.first_nonfinite_step, color=colour, linestyle="--", linewidth=1)
        ax.plot([run.first_nonfinite_step], [1.0], marker="X", color=colour, markersize=10,
                transform=ax.get_xaxis_transform(), clip_on=False)


def _ylabel(name: str, smooth: int) -> str:
    return name if smooth <= 1 else f"{name} ({smooth}-step mean)"


def _scale_axes(ax: Axes, run: Run, steps: Sequence[int], values: Sequence[float]) -> None:
    """A log y-axis, unless there is nothing positive to put on it; a run that was non-finite from step 0 has no
    points, so its x-axis gets a range around the marker (matplotlib's layout fails on a single-point range)."""
    if any(value > 0 for value in values):
        ax.set_yscale("log")
    if not steps:
        step = run.first_nonfinite_step or 0
        ax.update_datalim([(step - 1, 0.0), (step + 1, 0.0)], updatey=False)
        ax.autoscale_view()


def plot_loss(run: Run, ax: Axes | None = None, colour: str | None = None, smooth: int = 1) -> Axes:
    """Loss per step on a log axis; a dashed line and an X at the top mark the first non-finite step.

    ``smooth > 1`` plots the running mean of the last ``smooth`` finite losses (for noisy minibatch losses).
    """
    ax = ax or plt.figure(figsize=(6, 3.5)).gca()
    colour = colour or (BROKEN_COLOUR if run.fix is None else None)
    steps, losses = _finite_points(run.losses, smooth)
    line, = ax.plot(steps, losses, color=colour, label=_label(run))
    _mark_nonfinite(ax, run, line.get_color())
    _scale_axes(ax, run, steps, losses)
    ax.set(xlabel="step", ylabel=_ylabel("loss", smooth), title=f"{run.cause}: loss ({run.framework}, {run.device})")
    ax.legend(fontsize="small")
    return ax


def plot_grad_norm(run: Run, ax: Axes | None = None, colour: str | None = None, smooth: int = 1) -> Axes:
    """Global gradient norm per step on a log axis: geometric growth shows as a straight climb."""
    ax = ax or plt.figure(figsize=(6, 3.5)).gca()
    colour = colour or (BROKEN_COLOUR if run.fix is None else None)
    steps, norms = _finite_points(run.grad_norms, smooth)
    line, = ax.plot(steps, norms, color=colour, label=_label(run))
    _mark_nonfinite(ax, run, line.get_color())
    _scale_axes(ax, run, steps, norms)
    ax.set(xlabel="step", ylabel=_ylabel("gradient norm", smooth),
           title=f"{run.cause}: gradient norm ({run.framework}, {run.device})")
    ax.legend(fontsize="small")
    return ax


def plot_comparison(runs: Sequence[Run], smooth: int = 1) -> Figure:
    """The broken run against every fix: loss (left) and gradient norm (right), both on log axes.

    ``smooth > 1`` plots running means over that many steps (see ``plot_loss``)."""
    figure, (loss_ax, norm_ax) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    for run in runs:
        colour = BROKEN_COLOUR if run.fix is None else None
        line_colour = plot_loss(run, loss_ax, colour, smooth).get_lines()[-1].get_color()
        plot_grad_norm(run, norm_ax, line_colour, smooth)
    first = runs[0]
    figure.suptitle(f"{first.cause}: broken vs fixes ({first.framework}, {first.device}, seed {first.seed})")
    loss_ax.set_title("loss")
    norm_ax.set_title("gradient norm")
    return figure
