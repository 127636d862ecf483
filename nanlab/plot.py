"""Matplotlib figures of runs: loss with the first non-finite step marked, gradient norm on a log axis, and the
broken setting against every fix on one figure.

Every figure keeps these rules (tests/test_plot.py checks them on the matplotlib objects):

- every run is visible: a run with few finite points is drawn with markers, a single finite point is a marker, a
  run that raised or was non-finite from its first step gets an X at that step, and an axis with no finite value
  at all says so in words instead of showing an empty frame;
- the broken run is red and solid; a wrong fix (``Fix.hides_problem``) is violet-grey, dashed, with x markers; real
  fixes take other colours, each with its own hollow marker shape at steps offset from the other runs', so lines
  that overlap stay tellable apart; runs whose curves are the same (to ``SAME_CURVE`` relative, float32 rounding) are
  drawn once and the legend names them all (on a comparison's panels only runs the same in every panel merge, so
  each run has one style and one legend entry);
- when the broken run's blow-up would squash the other runs into a sliver, the y-axis fits the other runs and the
  broken run's off-scale points sit on the edge as triangles, its peak written in the legend (never on the data);
- a few points far below the rest (a gradient norm of 1e-17 among norms of 1e-2 to 1e4) or exact zeros do not
  stretch a log axis: they sit on its bottom edge as triangles, the lowest value written in the legend;
- long runs whose values swing over decades from one step to the next (minibatch losses that drop to ~0 and jump
  back) are drawn as running means on a linear axis (``smooth="auto"``), where "near zero" and "about one" read
  apart at a glance;
- a log axis always carries at least two labelled ticks spread over its range (1-2-5 ticks when it spans less
  than two decades), and tick labels do not overlap (``set_symlog`` for a symmetric-log axis with thinned ticks);
- a comparison's title says "broken vs fixes" only when it shows the broken run and a real fix ("broken vs wrong
  fixes", "fixes compared" otherwise);
- ``plot_comparison`` adds a held-out score panel when the loss alone hides the lesson (a wrong fix that stays
  finite, a finite run that did not learn).
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Sequence

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from nanlab.errors import NanlabError
from nanlab.run import Run

BROKEN_COLOUR = "tab:red"
WRONG_FIX_COLOUR = "#7e6b9a"  # violet-grey: never the broken run's red, never a real fix's colour
WRONG_FIX_LINES = ("--", ":", "-.")
WRONG_FIX_MARKERS = ("x", "+", "1")
FIX_COLOURS = ("tab:blue", "tab:green", "tab:orange", "tab:cyan", "tab:olive", "tab:brown", "tab:pink", "black")
FIX_MARKERS = ("s", "^", "D", "v", "P", "*", "h", "p")  # "o" is the broken run's
FEW_POINTS = 25  # up to this many finite points a run is drawn with a marker on every point
SQUASH_DECADES = 3.0  # the broken run may stretch the axis this many decades beyond the other runs before clipping
OUTLIER_SHARE = 0.02  # this share of an axis's lowest points may sit on its bottom edge instead of stretching it
TICK_MANTISSAS = ((1, 2, 5), (1, 2, 3, 5), (1, 1.5, 2, 3, 4, 5, 6, 8))  # log ticks within a decade, sparsest first
DECADE_TICKS = 2.5  # a log axis spanning this many decades or more is labelled at whole decades
NOISY_DECADES = 2.0  # a long run is noisy when a quarter of its steps change its value by this many decades
NOISY_MIN_POINTS = 50
SCORE_FLOOR = -1.0  # score bars stop here (an R^2 can be -400); the label still shows the true score
LABEL_WIDTH = 0.12  # a score label's width, as a share of the score axis
SAME_CURVE = 1e-6  # runs whose every value agrees to this relative tolerance are one curve on screen


@dataclass
class _Series:
    """One run drawn on one axis: what to plot and how."""

    run: Run
    recorded: Sequence[float]  # the run's losses or gradient norms, non-finite values included
    colour: str | None
    requested: int | str  # the ``smooth`` asked for: a window, or "auto"
    smooth: int = 1  # the window used, decided per axis (see _redraw)
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def smoothed(self, window: int) -> "_Series":
        self.smooth = window
        self.steps, self.values = _finite_points(self.recorded, window)
        return self


@dataclass
class _AxisState:
    """Everything nanlab drew on one axis, so that adding a run redraws the axis with all runs in view."""

    series: list[_Series] = field(default_factory=list)
    artists: list = field(default_factory=list)
    ylabel: str = ""
    linked: list["_AxisState"] = field(default_factory=list)  # axes showing the same runs: they group alike


_STATES: "weakref.WeakKeyDictionary[Axes, _AxisState]" = weakref.WeakKeyDictionary()


def is_wrong_fix(run: Run) -> bool:
    """True when ``run`` is a fix the catalogue marks as one that only hides the problem."""
    cause = _registered_cause(run) if run.fix is not None else None
    return bool(cause) and any(fix.id == run.fix and fix.hides_problem for fix in cause.fixes)


def _name(run: Run) -> str:
    return f"{run.setting} (wrong fix)" if is_wrong_fix(run) else run.setting


def _outcome(run: Run) -> str:
    if run.error:
        return f": raised {run.error}"
    if run.first_nonfinite_step is not None:
        return f": non-finite at step {run.first_nonfinite_step}"
    return ""


def _finite_points(values: Sequence[float], smooth: int = 1) -> tuple[list[int], list[float]]:
    """The finite values and their steps; with ``smooth > 1`` each value is the mean of the last ``smooth`` ones."""
    points = [(step, value) for step, value in enumerate(values) if math.isfinite(value)]
    steps, finite = [step for step, _ in points], [value for _, value in points]
    if smooth > 1:
        finite = [sum(finite[max(0, i + 1 - smooth):i + 1]) / min(i + 1, smooth) for i in range(len(finite))]
    return steps, finite


def _is_noisy(values: Sequence[float]) -> bool:
    """A long run a quarter of whose steps change its value by more than ``NOISY_DECADES`` decades (a minibatch
    loss that drops to ~1e-18 and jumps back to ~1): on a log axis such runs are a tangle of vertical lines."""
    positive = [value for value in values if math.isfinite(value) and value > 0]
    if len(positive) < NOISY_MIN_POINTS:
        return False
    swings = [abs(math.log10(b) - math.log10(a)) for a, b in zip(positive, positive[1:])]
    return sum(swing > NOISY_DECADES for swing in swings) >= len(swings) / 4


def _smooth(state: "_AxisState") -> bool:
    """Decide every series' window on this axis; True when the axis shows noisy runs as running means.

    An explicit ``smooth`` is kept. With ``"auto"``, if any run on the axis is noisy, every "auto" run gets the same
    window (a tenth of the longest step budget, at least 5), so that the axis label holds for all of them."""
    noisy = any(one.requested == "auto" and _is_noisy(one.recorded) for one in state.series)
    window = max(5, max(one.run.steps for one in state.series) // 10) if noisy else 1
    for one in state.series:
        one.smoothed(window if one.requested == "auto" else int(one.requested))
    return noisy


def _same_curve(a: _Series, b: _Series) -> bool:
    return (a.steps == b.steps and a.run.first_nonfinite_step == b.run.first_nonfinite_step
            and a.run.error == b.run.error
            and all(math.isclose(x, y, rel_tol=SAME_CURVE, abs_tol=0.0) for x, y in zip(a.values, b.values)))


def _groups(state: _AxisState) -> list[list[_Series]]:
    """Series with identical curves, grouped (drawn once); otherwise one group per series, in drawing order.

    On axes linked to others that show the same runs (a comparison's loss and gradient-norm panels) two runs merge
    only when they are identical on every one of them, so that a run has one style and one legend entry in all."""
    states = [state, *(other for other in state.linked if len(other.series) == len(state.series))]

    def same(first: int, second: int) -> bool:
        return all(_same_curve(one.series[first], one.series[second]) for one in states)

    groups: list[list[int]] = []
    for index in range(len(state.series)):
        match = next((group for group in groups if same(group[0], index)), None)
        if match is None:
            groups.append([index])
        else:
            match.append(index)
    return [[state.series[index] for index in group] for group in groups]


def _styles(groups: list[list[_Series]]) -> list[dict]:
    """Colour, line style and marker per group: red for broken, violet-grey dashed for a wrong fix, others cycled."""
    taken = {group[0].colour for group in groups if group[0].colour}
    free = iter([colour for colour in FIX_COLOURS if colour not in taken] + list(FIX_COLOURS))
    styles, fix_index, wrong_index = [], 0, 0
    for group in groups:
        run = group[0].run
        if run.fix is None:
            style = {"color": BROKEN_COLOUR, "linestyle": "-", "marker": "o"}
        elif is_wrong_fix(run):  # one colour for every wrong fix; each its own dash pattern and marker
            style = {"color": WRONG_FIX_COLOUR, "linestyle": WRONG_FIX_LINES[wrong_index % len(WRONG_FIX_LINES)],
                     "marker": WRONG_FIX_MARKERS[wrong_index % len(WRONG_FIX_MARKERS)]}
            wrong_index += 1
        else:
            style = {"color": None, "linestyle": "-", "marker": FIX_MARKERS[fix_index % len(FIX_MARKERS)]}
            fix_index += 1
        style["color"] = group[0].colour or style["color"] or next(free)
        for one in group:
            one.colour = style["color"]  # keep the colour when the axis is redrawn
        styles.append(style)
    return styles


def _is_log(values: list[float], noisy: bool) -> bool:
    """Whether ``_scale`` puts these values on a log axis (see there)."""
    return not noisy and min(values) >= 0 and (min(values) > 0 or _spans_decades(values))


def _floor(groups: list[list[_Series]]) -> float | None:
    """The bottom of a log axis when a few points would stretch it far below the rest (a step whose gradient norm
    fell to 1e-17 among norms of 1e-2 to 1e4) or cannot sit on it at all (exact zeros); else None.

    The lowest ``OUTLIER_SHARE`` of the points may fall more than ``SQUASH_DECADES`` below the others: those points
    sit on the bottom edge instead. Zeros sit there too, just under the lowest positive value."""
    values = sorted(value for group in groups for value in group[0].values)
    positive = [value for value in values if value > 0]
    if not positive:
        return None
    bulk_low = positive[min(len(positive) - 1, int(len(positive) * OUTLIER_SHARE))]
    floor = bulk_low / 10 ** SQUASH_DECADES
    if positive[0] < floor:
        return floor
    return positive[0] / 10 ** 0.2 if values[0] <= 0 else None


def _focus_range(groups: list[list[_Series]], floor: float | None) -> tuple[float, float] | None:
    """The y-range of the runs other than the broken one, when the broken run would squash them; else None."""
    shown = floor or 0.0
    others = [value for group in groups if group[0].run.fix is not None for value in group[0].values if value > shown]
    broken = [value for group in groups if group[0].run.fix is None for value in group[0].values if value > shown]
    if not others or not broken:
        return None
    low, high = min(others), max(others)
    if math.log10(max(high, *broken) / min(low, *broken)) <= math.log10(high / low) + SQUASH_DECADES:
        return None
    return low / 10 ** 0.2, high * 10 ** 0.2


def _draw_group(ax: Axes, state: _AxisState, group: list[_Series], style: dict, index: int, count: int,
                focus: tuple[float, float] | None, floor: float | None) -> list[tuple]:
    """Draw one group's curve (clipped into ``focus`` at the top and at ``floor`` at the bottom) and return its
    legend entries (handle, label): the curve's, then one per edge its points were moved to. Every artist carries
    its label, so a notebook that calls ``ax.legend`` again to move the legend keeps them all."""
    lead = group[0]
    label = " = ".join(_name(one.run) for one in group) + (" (same curve)" if len(group) > 1 else "")
    label += _outcome(lead.run)
    values, edges = lead.values, []  # edges: (steps, y, marker, label) of points moved onto the frame
    if focus is not None and lead.run.fix is None:
        off_scale = [(step, value) for step, value in zip(lead.steps, values) if value > focus[1]]
        if off_scale:
            peak = max(value for _, value in off_scale)
            values = [min(value, focus[1]) for value in values]
            edges.append(([step for step, _ in off_scale], focus[1], "^",
                          f"{_name(lead.run)} off scale, up to {peak:.2g}"))
    below = [(step, value) for step, value in zip(lead.steps, values) if floor is not None and value < floor]
    if below:
        lowest = min(value for _, value in below)
        values = [max(value, floor) for value in values]
        edges.append(([step for step, _ in below], floor, "v", f"{_name(lead.run)} below scale, down to {lowest:.2g}"))
    points = len(lead.steps)
    spacing = 1 if points <= FEW_POINTS else max(1, points // 10)
    # A fix's markers are hollow, so that fixes drawn on the same points (curves that nearly agree) all show.
    line, = ax.plot(lead.steps, values, color=style["color"], linestyle=style["linestyle"],
                    marker=style["marker"], markersize=7 if points == 1 else 4.5,
                    markerfacecolor="none" if lead.run.fix is not None else style["color"],
                    markevery=(index * spacing // max(count, 1) if spacing > 1 else 0, spacing),
                    linewidth=1.6 if lead.run.fix is None else 1.3, label=label)
    entries = [(line, label)]
    for steps, y, marker, edge in edges:
        marks, = ax.plot(steps, [y] * len(steps), linestyle="none", marker=marker, markersize=8,
                         color=style["color"], clip_on=False, label=edge)
        entries.append((marks, edge))
    state.artists += [handle for handle, _ in entries]
    return entries


def _mark_nonfinite(ax: Axes, state: _AxisState, groups: list[list[_Series]], styles: list[dict]) -> None:
    """A dashed line and an X at the top of the axis at each run's first non-finite step (or the step it raised);
    X marks that fall on the same step stack upwards."""
    stacked: dict[int, int] = {}
    for group, style in zip(groups, styles):
        run = group[0].run
        step = run.first_nonfinite_step
        if step is None and run.error:
            step = len(run.losses)
        if step is None:
            continue
        level = stacked.get(step, 0)
        stacked[step] = level + 1
        state.artists.append(ax.axvline(step, color=style["color"], linestyle="--", linewidth=1))
        state.artists += ax.plot([step], [1.0 - 0.08 * level], marker="X", color=style["color"], markersize=10,
                                 transform=ax.get_xaxis_transform(), clip_on=False, linestyle="none")


def _candidate_ticks(low: float, high: float, mantissas: Sequence[float]) -> list[float]:
    """Every ``mantissa x 10^k`` from the decade below ``low`` to the decade above ``high``, ascending."""
    decades = range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
    return [float(f"{mantissa}e{decade}") for decade in decades for mantissa in mantissas]


def _readable_ticks(ax: Axes, low: float, high: float, keep_low: bool = False) -> None:
    """A log axis spanning ``DECADE_TICKS`` decades or more keeps decade ticks. A narrower one gets plain-number
    ticks over its whole range: the sparsest of the ``TICK_MANTISSAS`` sets that puts three ticks in range; when
    none does (a range narrower than ~1.7x), the axis widens to the finest set's neighbouring ticks, so that both
    ends are labelled (with ``keep_low``, a bottom edge holding below-scale points stays where it is)."""
    if math.log10(high / low) >= DECADE_TICKS:
        ax.yaxis.set_major_locator(LogLocator(base=10, numticks=8))
        return
    for mantissas in TICK_MANTISSAS:
        ticks = [tick for tick in _candidate_ticks(low, high, mantissas) if low <= tick <= high]
        if len(ticks) >= 3:
            break
    else:
        finest = _candidate_ticks(low, high, TICK_MANTISSAS[-1])
        low = low if keep_low else max(tick for tick in finest if tick <= low)
        high = min(tick for tick in finest if tick >= high)
        ax.set_ylim(low, high)
        ticks = [tick for tick in finest if low <= tick <= high]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def set_symlog(ax: Axes, linthresh: float = 1.0, axis: str = "y", max_ticks: int = 7) -> None:
    """A symmetric-log axis whose tick labels do not overlap: zero, and decades thinned to at most ``max_ticks``
    ticks; ``±linthresh`` itself is left out when thinning (on screen it sits next to zero)."""
    getattr(ax, f"set_{axis}scale")("symlog", linthresh=linthresh)
    low, high = ax.get_ylim() if axis == "y" else ax.get_xlim()
    decades = max(1, math.ceil(math.log10(max(abs(low), abs(high), linthresh) / linthresh)))
    signs = [sign for sign, end in ((-1, low), (1, high)) if sign * end > 0]
    stride = max(1, math.ceil(len(signs) * (decades + 1) / max(1, max_ticks - 1)))
    first = 0 if stride == 1 else stride
    magnitudes = [linthresh * 10 ** power for power in range(first, decades + 1, stride)]
    ticks = sorted([0.0] + [sign * magnitude for sign in signs for magnitude in magnitudes
                            if low <= sign * magnitude <= high])
    getattr(ax, f"{axis}axis").set_major_locator(FixedLocator(ticks))


def _y_limits(values: list[float], focus: tuple[float, float] | None,
              floor: float | None) -> tuple[float, float]:
    """The y-range on a log axis: the focus range, else the drawn values padded by a fifth of a decade; the bottom
    at ``floor`` when one is set."""
    low, high = focus or (min(values) / 10 ** 0.2, max(values) * 10 ** 0.2)
    return (floor if floor is not None else low), high


def _scale(ax: Axes, values: list[float], focus: tuple[float, float] | None, floor: float | None,
           noisy: bool) -> None:
    """Axis scales and limits for the drawn values: linear for noisy runs (running means) and for values around
    zero within two decades, log for positive values, symmetric-log for values of both signs over many decades."""
    ax.set_autoscalex_on(True)  # a first call with nothing finite fixed the x-range around its marker
    ax.set_autoscaley_on(True)
    ax.relim()  # forget the lines just removed
    if _is_log(values, noisy):  # exact zeros (a clipped gradient norm) sit on the bottom edge (see _floor)
        ax.set_yscale("log")
        ax.autoscale_view(scaley=False)
        low, high = _y_limits([value for value in values if value > 0], focus, floor)
        ax.set_ylim(low, high)
        _readable_ticks(ax, low, high, keep_low=floor is not None)
    elif noisy or not _spans_decades(values):
        ax.set_yscale("linear")
        ax.autoscale_view()
    else:
        ax.autoscale_view()
        set_symlog(ax, linthresh=min(abs(value) for value in values if value != 0))


def _redraw(ax: Axes) -> None:
    state = _STATES[ax]
    for artist in state.artists:
        artist.remove()
    state.artists = []
    noisy = _smooth(state)
    groups = _groups(state)
    styles = _styles(groups)
    values = [value for group in groups for value in group[0].values]
    floor = _floor(groups) if values and _is_log(values, noisy) else None
    focus = _focus_range(groups, floor)
    handles = [entry for index, (group, style) in enumerate(zip(groups, styles))
               for entry in _draw_group(ax, state, group, style, index, len(groups), focus, floor)]
    _mark_nonfinite(ax, state, groups, styles)
    if values:
        _scale(ax, values, focus, floor, noisy)
    else:
        state.artists.append(ax.text(0.5, 0.5, "no finite value to plot:\nevery run was non-finite from its first "
                                     "step or raised", transform=ax.transAxes, ha="center", va="center",
                                     color="dimgray"))
        marks = [group[0].run.first_nonfinite_step or len(group[0].run.losses) for group in groups]
        ax.set_xlim(min(marks) - 1, max(marks) + 1)
    smoothing = {one.smooth for one in state.series if one.smooth > 1}
    if smoothing:
        ax.set_ylabel(f"{state.ylabel} ({'/'.join(map(str, sorted(smoothing)))}-step mean)")
    else:
        ax.set_ylabel(state.ylabel)
    ax.legend([handle for handle, _ in handles], [label for _, label in handles], fontsize="small")


def _spans_decades(values: list[float]) -> bool:
    magnitudes = [abs(value) for value in values if value != 0]
    return bool(magnitudes) and max(magnitudes) / min(magnitudes) > 100


def _plot(ax: Axes | None, run: Run, values: Sequence[float], colour: str | None, smooth: int | str,
          name: str, title: str) -> Axes:
    ax = ax or plt.figure(figsize=(6, 4.2), layout="constrained").gca()
    state = _STATES.setdefault(ax, _AxisState(ylabel=name))
    state.series.append(_Series(run, values, colour, smooth))
    ax.set(xlabel="step", title=f"{run.cause}: {title} ({run.framework}, {run.device})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))  # whole, round steps
    _redraw(ax)
    return ax


def plot_loss(run: Run, ax: Axes | None = None, colour: str | None = None, smooth: int | str = 1) -> Axes:
    """Loss per step on a log axis; a dashed line and an X at the top mark the first non-finite step.

    Calling it again with the same ``ax`` adds a run and redraws the axis with every run in view (see the module's
    rules). ``smooth > 1`` plots the running mean of the last ``smooth`` finite losses (for noisy minibatch
    losses); ``smooth="auto"`` does so only for long runs that swing over decades.
    """
    return _plot(ax, run, run.losses, colour, smooth, "loss", "loss")


def plot_grad_norm(run: Run, ax: Axes | None = None, colour: str | None = None, smooth: int | str = 1) -> Axes:
    """Global gradient norm per step on a log axis: geometric growth shows as a straight climb."""
    return _plot(ax, run, run.grad_norms, colour, smooth, "gradient norm", "gradient norm")


def _hides_the_lesson(runs: Sequence[Run]) -> bool:
    """True when the loss alone misleads: a wrong fix that stays finite, or a finite run that did not learn."""
    scored = any(run.score is not None for run in runs)
    return scored and any(run.finite and (is_wrong_fix(run) or not run.learned) for run in runs if run.fix)


def plot_scores(runs: Sequence[Run], ax: Axes | None = None, colours: Sequence[str] | None = None) -> Axes:
    """The held-out score of each run as a horizontal bar (a wrong fix hatched), the cause's pass mark as a dotted
    line; a run without a score (non-finite, or raised) says why in place of its bar. ``colours``, one per run,
    match the bars to lines drawn elsewhere."""
    ax = ax or plt.figure(figsize=(4, 3)).gca()
    colours = list(colours) if colours else _default_colours(runs)
    rows = len(runs)
    scores = [max(run.score, SCORE_FLOOR) for run in runs if run.score is not None]
    low, high = min([0.0, *scores]) * 1.15, max([1.0, *(score * 1.15 for score in scores)])
    span = high - low
    pass_score = next((cause.pass_score for cause in map(_registered_cause, runs) if cause), None)
    for index, (run, colour) in enumerate(zip(runs, colours)):
        row = rows - 1 - index  # the first run on top, as in the legend
        if run.score is None:
            reason = f"raised {run.error}" if run.error else f"non-finite at step {run.first_nonfinite_step}"
            ax.text(0.02, row, f"no score: {reason}", va="center", fontsize="small", color=colour)
        else:
            drawn = max(run.score, SCORE_FLOOR)  # an R^2 of -400 would squash every other bar
            ax.barh(row, drawn, color=colour, hatch="//" if is_wrong_fix(run) else None, alpha=0.85)
            shown = round(run.score, 2) + 0.0  # + 0.0: no "-0.00" for a score just below zero
            ax.text(_score_label_x(drawn, pass_score, span), row, f" {shown:.2f}", va="center", fontsize="small")
    ax.set_yticks(range(rows), [run.setting for run in reversed(runs)], fontsize="small")
    ax.set_ylim(-0.6, rows - 0.4)
    ax.set_xlim(low, high)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))  # labels apart on a narrow panel
    title = "held-out score"
    if pass_score is not None:  # named in the title: a legend inside this small panel sits on the bars
        ax.axvline(pass_score, color="black", linestyle=":", linewidth=1)
        title += f" (dotted: pass mark {pass_score:g})"
    xlabel = next((run.score_name for run in runs if run.score_name), "held-out score")
    if any(run.score is not None and run.score < SCORE_FLOOR for run in runs):
        xlabel += f" (bars cut at {SCORE_FLOOR:g})"
    ax.set(xlabel=xlabel, title=title)
    return ax


def _score_label_x(drawn: float, pass_score: float | None, span: float) -> float:
    """Where a bar's score label starts: at the bar's end, or just past the pass mark when the label would sit
    on its dotted line (a score a little below the mark)."""
    x = max(drawn, 0.0)
    if pass_score is not None and 0 <= pass_score - x < LABEL_WIDTH * span:
        return pass_score
    return x


def _default_colours(runs: Sequence[Run]) -> list[str]:
    """The colours ``plot_loss`` gives these runs drawn in this order on one axis: red for the broken run, the
    wrong-fix colour, and the fix colours in turn for the real fixes."""
    colours, fixes = [], 0
    for run in runs:
        if run.fix is None:
            colours.append(BROKEN_COLOUR)
        elif is_wrong_fix(run):
            colours.append(WRONG_FIX_COLOUR)
        else:
            colours.append(FIX_COLOURS[fixes % len(FIX_COLOURS)])
            fixes += 1
    return colours


def _registered_cause(run: Run):
    """The catalogue's Cause for ``run``, or None for a cause it does not know."""
    from nanlab.registry import get_cause

    try:
        return get_cause(run.cause)
    except NanlabError:
        return None


def _figure_legend(figure: Figure, panels: dict[str, Axes]) -> None:
    """One legend under the panels instead of one inside each (it never covers a curve); a label only some panels
    have (runs identical there) is kept too, naming its panel."""
    labels = {name: [text.get_text() for text in ax.get_legend().get_texts()] for name, ax in panels.items()}
    everywhere = set.intersection(*map(set, labels.values()))
    entries: dict[str, object] = {}
    for name, ax in panels.items():
        legend = ax.get_legend()
        for handle, label in zip(legend.legend_handles, labels[name]):
            entries.setdefault(label if label in everywhere else f"{label} [{name}]", handle)
        legend.remove()
    widest = max(map(len, entries)) + 6  # characters, with the handle
    columns = max(1, min(3, len(entries), int(figure.get_figwidth() * 13 / widest)))  # ~13 small characters/inch
    figure.legend(list(entries.values()), list(entries), loc="outside lower center", fontsize="small",
                  ncols=columns, frameon=False)


def plot_comparison(runs: Sequence[Run], smooth: int | str = "auto", metric: bool | str = "auto") -> Figure:
    """The broken run against every fix: loss (left) and gradient norm (right), both on log axes.

    ``smooth > 1`` plots running means over that many steps (see ``plot_loss``); the default ``"auto"`` smooths
    only long runs that swing over decades. ``metric=True`` adds a third panel with each run's held-out score;
    ``"auto"`` adds it when the loss alone hides the lesson (a wrong fix that stays finite, a run that did not
    learn).
    """
    show_metric = _hides_the_lesson(runs) if metric == "auto" else bool(metric)
    panels = 3 if show_metric else 2
    figure, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.6), layout="constrained",
                                width_ratios=[1, 1, 0.7][:panels])
    loss_ax, norm_ax = axes[0], axes[1]
    for run in runs:
        plot_loss(run, loss_ax, smooth=smooth)
        plot_grad_norm(run, norm_ax, smooth=smooth)
    loss_state, norm_state = _STATES[loss_ax], _STATES[norm_ax]
    loss_state.linked, norm_state.linked = [norm_state], [loss_state]
    _redraw(loss_ax)  # now merging only runs identical in both panels
    colours = [one.colour for one in loss_state.series]
    for one, colour in zip(norm_state.series, colours):
        one.colour = colour
    _redraw(norm_ax)
    if show_metric:
        plot_scores(runs, axes[2], colours)
    _figure_legend(figure, {"loss": loss_ax, "gradient norm": norm_ax})
    first = runs[0]
    has_broken = any(run.fix is None for run in runs)
    fixes = [run for run in runs if run.fix is not None]
    what = "fixes compared"
    if has_broken:
        what = "broken vs wrong fixes" if fixes and all(map(is_wrong_fix, fixes)) else "broken vs fixes"
    figure.suptitle(f"{first.cause}: {what} ({first.framework}, {first.device}, seed {first.seed})")
    loss_ax.set_title("loss")
    norm_ax.set_title("gradient norm")
    return figure
