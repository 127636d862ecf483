"""Matplotlib figures of runs: loss with the first non-finite step marked, gradient norm on a log axis, and the
broken setting against every fix on one figure.

Every figure keeps these rules (tests/test_plot.py checks them on the matplotlib objects):

- every run is visible: a run with few finite points is drawn with markers, a single finite point is a marker, and
  an axis with no finite value at all says so in words instead of showing an empty frame;
- a dashed line and an X mark the step where the values *drawn on that axis* went non-finite (or the run raised):
  a run whose loss stayed finite while its gradient went NaN has its X on the gradient-norm panel only, its loss
  drawn finite to the end, and its legend entry says so;
- the broken run is red and solid; a wrong fix is violet-grey, dashed, with x markers, because the catalogue marks
  it (``Fix.hides_problem`` on one of the cause's ``fixes`` or ``asides``; a run of a side experiment names its
  cause ``"cause-id (what)"``), never because a notebook asks; real fixes take other colours, each with its own
  hollow marker shape at steps offset from the other runs';
- runs that would hide one another are merged with a note in the legend: curves the same to ``SAME_CURVE``
  relative (float32 rounding) are drawn once as "a = b (same curve)", curves within ``OVERLAP`` of the axis height
  of each other everywhere as "a ≈ b (curves overlap)" (a broken run, wrong fixes and real fixes merge only with
  their own kind), and a run that follows an earlier one for its first steps is drawn from where they part, its
  legend entry saying "follows X to step k"; on a comparison's panels runs merge only when they do so in every
  panel, so each run has one style and one legend entry;
- when the broken run's blow-up would squash the other runs into a sliver, a log axis fits the other runs in its
  lower part and shows the climb above them on a compressed log scale, in a grey band named in the legend (a
  linear axis keeps the other runs' range and puts the off-scale points on its edge as triangles, the peak
  written in the legend); no note is ever written on the data;
- text is sized for a projector (``FONT_SIZES``: tick labels 12 pt, legends 12 pt, titles 14 pt), and
  ``projector_text()`` gives a notebook's own figures the same sizes;
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
import numpy as np
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
OVERLAP = 0.012  # curves closer than this share of the axis height (a line's width) hide one another
CLIMB_SHARE = 0.3  # the share of a log axis's height given to the broken run's compressed climb
FONT_SIZES = {"tick": 12, "label": 13, "title": 14, "legend": 12, "suptitle": 15, "note": 12}  # points
PROJECTOR_RC = {"font.size": FONT_SIZES["note"], "xtick.labelsize": FONT_SIZES["tick"],
                "ytick.labelsize": FONT_SIZES["tick"], "axes.labelsize": FONT_SIZES["label"],
                "axes.titlesize": FONT_SIZES["title"], "legend.fontsize": FONT_SIZES["legend"],
                "figure.titlesize": FONT_SIZES["suptitle"]}  # FONT_SIZES as matplotlib rc settings


@dataclass
class _Series:
    """One run drawn on one axis: what to plot and how."""

    run: Run
    recorded: Sequence[float]  # the run's losses or gradient norms, non-finite values included
    colour: str | None  # the colour asked for (None: nanlab picks one)
    requested: int | str  # the ``smooth`` asked for: a window, or "auto"
    drawn: str | None = None  # the colour it was drawn in, decided per redraw (see _styles)
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
    noisy: bool = False  # the runs are drawn as running means (see _smooth)


_STATES: "weakref.WeakKeyDictionary[Axes, _AxisState]" = weakref.WeakKeyDictionary()


def is_wrong_fix(run: Run) -> bool:
    """True when ``run`` is a fix the catalogue marks as one that only hides the problem (``Fix.hides_problem`` on
    one of its cause's ``fixes`` or ``asides``)."""
    cause = _registered_cause(run) if run.fix is not None else None
    return bool(cause) and any(fix.id == run.fix and fix.hides_problem for fix in (*cause.fixes, *cause.asides))


def _kind(run: Run) -> str:
    return "broken" if run.fix is None else "wrong fix" if is_wrong_fix(run) else "fix"


def _name(run: Run) -> str:
    return f"{run.setting} (wrong fix)" if is_wrong_fix(run) else run.setting


def _outcome(run: Run) -> str:
    if run.error:
        return f": raised {run.error}"
    step = run.first_nonfinite_step
    if step is None:
        return ""
    loss_finite = step < len(run.losses) and math.isfinite(run.losses[step])
    if loss_finite and step < len(run.grad_norms) and not math.isfinite(run.grad_norms[step]):
        return f": gradient non-finite at step {step}, loss finite"
    return f": non-finite at step {step}"


def _nonfinite_step(one: "_Series") -> int | None:
    """Where this axis marks the run: its first non-finite value here, or the step it raised; None when every
    value drawn here is finite (a loss that stayed finite while the gradient went NaN)."""
    step = next((step for step, value in enumerate(one.recorded) if not math.isfinite(value)), None)
    if step is None and one.run.error:
        return len(one.run.losses)
    return step


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
    state.noisy = noisy
    return noisy


@dataclass
class _Group:
    """Runs drawn as one curve (``members``, the first one drawn), from its ``start``-th point on; ``note`` says
    why it is merged, ``follows`` which earlier curve it ran on before ``start``."""

    members: list[_Series]
    note: str = ""
    start: int = 0
    follows: str = ""

    @property
    def lead(self) -> _Series:
        return self.members[0]

    identical: list[bool] = field(default_factory=list)  # per member after the first: the same curve as the lead

    def label(self) -> str:
        names = _name(self.lead.run) + "".join((" = " if same else " ≈ ") + _name(one.run)
                                               for one, same in zip(self.members[1:], self.identical))
        return names + self.note + self.follows + _outcome(self.lead.run)


class _Screen:
    """How far apart two values look on one axis: in decades on a log axis, in data units on a linear one, and
    the distance under which two curves hide one another (``OVERLAP`` of the height the runs other than the
    broken one take)."""

    def __init__(self, state: "_AxisState"):
        values = [value for one in state.series for value in one.values]
        self.log = bool(values) and _is_log(values, state.noisy)
        shown = [self.position(value) for one in state.series if one.run.fix is not None for value in one.values]
        shown = [value for value in shown if math.isfinite(value)] or [
            value for value in map(self.position, values) if math.isfinite(value)]
        span = max(shown) - min(shown) if shown else 0.0
        self.tolerance = OVERLAP * max(span, 0.4 if self.log else 0.0)  # a flat run's log axis spans 0.4 decades

    def position(self, value: float) -> float:
        if not self.log:
            return value
        return math.log10(value) if value > 0 else -math.inf

    def close(self, a: float, b: float) -> bool:
        first, second = self.position(a), self.position(b)
        if not (math.isfinite(first) and math.isfinite(second)):
            return a == b
        return abs(first - second) <= self.tolerance


def _shared_prefix(screen: _Screen, a: _Series, b: _Series) -> int:
    """How many of their first points two series draw in the same place."""
    count = 0
    for step_a, value_a, step_b, value_b in zip(a.steps, a.values, b.steps, b.values):
        if step_a != step_b or not screen.close(value_a, value_b):
            break
        count += 1
    return count


def _overlap(screen: _Screen, a: _Series, b: _Series) -> bool:
    """Two series that draw one curve: the same steps, every point in the same place, marked alike."""
    return (a.steps == b.steps and _shared_prefix(screen, a, b) == len(a.steps)
            and _nonfinite_step(a) == _nonfinite_step(b) and a.run.error == b.run.error)


def _same_curve(a: _Series, b: _Series) -> bool:
    return (a.steps == b.steps and _nonfinite_step(a) == _nonfinite_step(b) and a.run.error == b.run.error
            and all(math.isclose(x, y, rel_tol=SAME_CURVE, abs_tol=0.0) for x, y in zip(a.values, b.values)))


def _groups(state: _AxisState) -> list[_Group]:
    """The curves to draw: runs that would hide one another merged (see the module's rules), in drawing order.

    On axes linked to others that show the same runs (a comparison's loss and gradient-norm panels) runs merge
    only when they do so on every one of them, so that a run has one style and one legend entry in all."""
    states = [state, *(other for other in state.linked if len(other.series) == len(state.series))]
    screens = [_Screen(one) for one in states]

    def overlap(first: int, second: int) -> bool:
        return all(_overlap(screen, one.series[first], one.series[second]) for one, screen in zip(states, screens))

    indices: list[list[int]] = []
    for index in range(len(state.series)):
        match = next((group for group in indices if _kind(state.series[group[0]].run) == _kind(
            state.series[index].run) and overlap(group[0], index)), None)
        if match is None:
            indices.append([index])
        else:
            match.append(index)
    groups = []
    for members in indices:
        group = _Group([state.series[index] for index in members])
        if len(members) > 1:
            group.identical = [all(_same_curve(one.series[members[0]], one.series[index]) for one in states)
                               for index in members[1:]]
            group.note = " (same curve)" if all(group.identical) else " (curves overlap)"
        groups.append(group)
    for position, (group, members) in enumerate(zip(groups, indices)):
        shared, followed = 0, None
        for earlier, earlier_members in zip(groups[:position], indices[:position]):
            common = min(_shared_prefix(screen, one.series[members[0]], one.series[earlier_members[0]])
                         for one, screen in zip(states, screens))
            if common > shared:
                shared, followed = common, earlier
        extends = any(shared < len(one.series[members[0]].steps) for one in states)
        if followed is not None and shared >= 2 and extends:
            group.start = shared - 1  # the curve starts on the last point it shares, so that it joins on
            group.follows = f", follows {_name(followed.lead.run)} to step {group.lead.steps[shared - 1]}"
    return groups


def _styles(groups: list[_Group]) -> list[dict]:
    """Colour, line style and marker per group: red for broken, violet-grey dashed for a wrong fix (whatever colour
    was asked for), a real fix the colour asked for or the next free one. Decided afresh at each redraw from the
    colours asked for, so that runs merged on an earlier draw (one colour) get colours of their own once apart."""
    taken = {group.lead.colour for group in groups if group.lead.colour}
    free = iter([colour for colour in FIX_COLOURS if colour not in taken] + list(FIX_COLOURS))
    styles, fix_index, wrong_index = [], 0, 0
    for group in groups:
        run = group.lead.run
        if run.fix is None:
            style = {"color": BROKEN_COLOUR, "linestyle": "-", "marker": "o"}
        elif is_wrong_fix(run):  # one colour for every wrong fix; each its own dash pattern and marker
            style = {"color": WRONG_FIX_COLOUR, "linestyle": WRONG_FIX_LINES[wrong_index % len(WRONG_FIX_LINES)],
                     "marker": WRONG_FIX_MARKERS[wrong_index % len(WRONG_FIX_MARKERS)]}
            wrong_index += 1
        else:
            style = {"color": None, "linestyle": "-", "marker": FIX_MARKERS[fix_index % len(FIX_MARKERS)]}
            fix_index += 1
        asked = None if is_wrong_fix(run) else group.lead.colour  # the catalogue's mark wins over a colour asked for
        style["color"] = asked or style["color"] or next(free)
        for one in group.members:
            one.drawn = style["color"]
        styles.append(style)
    return styles


def _is_log(values: list[float], noisy: bool) -> bool:
    """Whether ``_scale`` puts these values on a log axis (see there)."""
    return not noisy and min(values) >= 0 and (min(values) > 0 or _spans_decades(values))


def _floor(groups: list[_Group]) -> float | None:
    """The bottom of a log axis when a few points would stretch it far below the rest (a step whose gradient norm
    fell to 1e-17 among norms of 1e-2 to 1e4) or cannot sit on it at all (exact zeros); else None.

    The lowest ``OUTLIER_SHARE`` of the points may fall more than ``SQUASH_DECADES`` below the others: those points
    sit on the bottom edge instead. Zeros sit there too, just under the lowest positive value."""
    values = sorted(value for group in groups for value in group.lead.values)
    positive = [value for value in values if value > 0]
    if not positive:
        return None
    bulk_low = positive[min(len(positive) - 1, int(len(positive) * OUTLIER_SHARE))]
    floor = bulk_low / 10 ** SQUASH_DECADES
    if positive[0] < floor:
        return floor
    return positive[0] / 10 ** 0.2 if values[0] <= 0 else None


def _focus_range(groups: list[_Group], floor: float | None) -> tuple[float, float] | None:
    """The y-range of the runs other than the broken one, when the broken run would squash them; else None."""
    shown = floor or 0.0
    others = [value for group in groups if group.lead.run.fix is not None for value in group.lead.values
              if value > shown]
    broken = [value for group in groups if group.lead.run.fix is None for value in group.lead.values if value > shown]
    if not others or not broken:
        return None
    low, high = min(others), max(others)
    if math.log10(max(high, *broken) / min(low, *broken)) <= math.log10(high / low) + SQUASH_DECADES:
        return None
    return low / 10 ** 0.2, high * 10 ** 0.2


def _draw_group(ax: Axes, state: _AxisState, group: _Group, style: dict, index: int, count: int,
                clip: tuple[float, float] | None, floor: float | None) -> list[tuple]:
    """Draw one group's curve from its ``start`` (clipped into ``clip`` at the top on a linear axis and at
    ``floor`` at the bottom) and return its legend entries (handle, label): the curve's, then one per edge its
    points were moved to. Every artist carries its label, so a notebook that calls ``ax.legend`` again to move the
    legend keeps them all."""
    lead = group.lead
    label = group.label()
    steps, values = lead.steps[group.start:], lead.values[group.start:]
    edges = []  # (steps, y, marker, label) of points moved onto the frame
    if clip is not None and lead.run.fix is None:
        off_scale = [(step, value) for step, value in zip(steps, values) if value > clip[1]]
        if off_scale:
            peak = max(value for _, value in off_scale)
            values = [min(value, clip[1]) for value in values]
            edges.append(([step for step, _ in off_scale], clip[1], "^",
                          f"{_name(lead.run)} off scale, up to {peak:.2g}"))
    below = [(step, value) for step, value in zip(steps, values) if floor is not None and value < floor]
    if below:
        lowest = min(value for _, value in below)
        values = [max(value, floor) for value in values]
        edges.append(([step for step, _ in below], floor, "v", f"{_name(lead.run)} below scale, down to {lowest:.2g}"))
    points = len(steps)
    spacing = 1 if points <= FEW_POINTS else max(1, points // 10)
    # A fix's markers are hollow, so that fixes drawn on the same points (curves that nearly agree) all show.
    line, = ax.plot(steps, values, color=style["color"], linestyle=style["linestyle"],
                    marker=style["marker"], markersize=8 if points == 1 else 5.5,
                    markerfacecolor="none" if lead.run.fix is not None else style["color"],
                    markevery=(index * spacing // max(count, 1) if spacing > 1 else 0, spacing),
                    linewidth=1.8 if lead.run.fix is None else 1.5, label=label)
    entries = [(line, label)]
    for edge_steps, y, marker, edge in edges:
        marks, = ax.plot(edge_steps, [y] * len(edge_steps), linestyle="none", marker=marker, markersize=9,
                         color=style["color"], clip_on=False, label=edge)
        entries.append((marks, edge))
    state.artists += [handle for handle, _ in entries]
    return entries


def _mark_nonfinite(ax: Axes, state: _AxisState, groups: list[_Group], styles: list[dict]) -> None:
    """A dashed line and an X at the top of the axis where a group's values on this axis went non-finite (or its
    run raised); X marks that fall on the same step stack downwards. A run whose values here all stayed finite
    gets no mark here."""
    stacked: dict[int, int] = {}
    for group, style in zip(groups, styles):
        step = _nonfinite_step(group.lead)
        if step is None:
            continue
        level = stacked.get(step, 0)
        stacked[step] = level + 1
        state.artists.append(ax.axvline(step, color=style["color"], linestyle="--", linewidth=1))
        state.artists += ax.plot([step], [1.0 - 0.08 * level], marker="X", color=style["color"], markersize=11,
                                 transform=ax.get_xaxis_transform(), clip_on=False, linestyle="none")


def _candidate_ticks(low: float, high: float, mantissas: Sequence[float]) -> list[float]:
    """Every ``mantissa x 10^k`` from the decade below ``low`` to the decade above ``high``, ascending."""
    decades = range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
    return [float(f"{mantissa}e{decade}") for decade in decades for mantissa in mantissas]


def _tick_values(low: float, high: float, keep_low: bool = False) -> tuple[list[float] | None, float, float]:
    """Ticks for a log range (None: whole decades, for ``LogLocator``) and the range widened to show them.

    A range spanning ``DECADE_TICKS`` decades or more keeps decade ticks. A narrower one gets plain-number ticks over
    its whole range: the sparsest of the ``TICK_MANTISSAS`` sets that puts three ticks in range; when none does (a
    range narrower than ~1.7x), the range widens to the finest set's neighbouring ticks, so that both ends are
    labelled (with ``keep_low``, a bottom edge holding below-scale points stays where it is)."""
    if math.log10(high / low) >= DECADE_TICKS:
        return None, low, high
    for mantissas in TICK_MANTISSAS:
        ticks = [tick for tick in _candidate_ticks(low, high, mantissas) if low <= tick <= high]
        if len(ticks) >= 3:
            return ticks, low, high
    finest = _candidate_ticks(low, high, TICK_MANTISSAS[-1])
    low = low if keep_low else max(tick for tick in finest if tick <= low)
    high = min(tick for tick in finest if tick >= high)
    return [tick for tick in finest if low <= tick <= high], low, high


def _readable_ticks(ax: Axes, low: float, high: float, keep_low: bool = False) -> None:
    """Readable ticks on a log axis over [low, high] (see ``_tick_values``); the limits widen with them."""
    ticks, new_low, new_high = _tick_values(low, high, keep_low)
    if ticks is None:
        ax.yaxis.set_major_locator(LogLocator(base=10, numticks=8))
        return
    if (new_low, new_high) != (low, high):
        ax.set_ylim(new_low, new_high)
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _decade_label(value: float) -> str:
    return f"$10^{{{round(math.log10(value))}}}$"


def _climb_scale(ax: Axes, low: float, high: float, peak: float, keep_low: bool) -> tuple[float, float]:
    """A log axis whose range [low, high] (the runs other than the broken one) fills the lower part and whose
    decades from ``high`` up to ``peak`` (the broken run's climb) are compressed into the top ``CLIMB_SHARE`` of
    the height, under a grey band; returns the band (its bottom and top)."""
    ticks, low, high = _tick_values(low, high, keep_low)
    decades_below = ticks is None
    if decades_below:
        first, last = math.ceil(math.log10(low) - 1e-9), math.floor(math.log10(high) + 1e-9)
        stride = max(1, math.ceil((last - first + 1) / 5))
        ticks = [10.0 ** power for power in range(first, last + 1, stride)]
    below = math.log10(high) - math.log10(low)
    top_value = peak * 10 ** 0.3
    climb = math.log10(top_value) - math.log10(high)
    squeeze = min(1.0, CLIMB_SHARE / (1 - CLIMB_SHARE) * below / climb)
    bend = math.log10(high)

    def forward(values):
        with np.errstate(divide="ignore", invalid="ignore"):
            decades = np.log10(np.clip(np.asarray(values, dtype=float), 1e-300, None))
        return np.where(decades > bend, bend + (decades - bend) * squeeze, decades)

    def inverse(positions):
        positions = np.asarray(positions, dtype=float)
        decades = np.where(positions > bend, bend + (positions - bend) / squeeze, positions)
        return 10.0 ** np.clip(decades, -300, 300)

    ax.set_yscale("function", functions=(forward, inverse))
    ax.set_ylim(low, top_value)
    first, last = math.floor(bend) + 1, math.floor(math.log10(peak))
    stride = max(1, math.ceil((last - first + 1) / 2))  # at most two labelled decades in the band
    upper = [10.0 ** power for power in range(last, first - 1, -stride)][::-1]
    upper = [tick for tick in upper if float(forward(tick)) - float(forward(high)) > 0.06 * (
        float(forward(top_value)) - float(forward(low)))]  # not on the band's bottom edge, next to its top tick
    ax.yaxis.set_major_locator(FixedLocator([*ticks, *upper]))
    ax.yaxis.set_major_formatter(FuncFormatter(
        lambda value, _: _decade_label(value) if decades_below or value > high * 1.0001 else f"{value:.3g}"))
    ax.yaxis.set_minor_locator(FixedLocator([]))
    return high, top_value


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
           noisy: bool) -> tuple[float, float] | None:
    """Axis scales and limits for the drawn values: linear for noisy runs (running means) and for values around
    zero within two decades, log for positive values (with the broken run's climb compressed above ``focus``),
    symmetric-log for values of both signs over many decades. Returns the compressed band, if any."""
    ax.set_autoscalex_on(True)  # a first call with nothing finite fixed the x-range around its marker
    ax.set_autoscaley_on(True)
    ax.relim()  # forget the lines just removed
    if _is_log(values, noisy):  # exact zeros (a clipped gradient norm) sit on the bottom edge (see _floor)
        positive = [value for value in values if value > 0]
        low, high = _y_limits(positive, focus, floor)
        if focus is not None:
            ax.autoscale_view(scaley=False)
            return _climb_scale(ax, low, high, max(positive), keep_low=floor is not None)
        ax.set_yscale("log")
        ax.autoscale_view(scaley=False)
        ax.set_ylim(low, high)
        _readable_ticks(ax, low, high, keep_low=floor is not None)
    elif noisy or not _spans_decades(values):
        ax.set_yscale("linear")
        ax.autoscale_view()
    else:
        ax.autoscale_view()
        set_symlog(ax, linthresh=min(abs(value) for value in values if value != 0))
    return None


def _redraw(ax: Axes) -> None:
    state = _STATES[ax]
    for artist in state.artists:
        artist.remove()
    state.artists = []
    noisy = _smooth(state)
    groups = _groups(state)
    styles = _styles(groups)
    values = [value for group in groups for value in group.lead.values]
    log = bool(values) and _is_log(values, noisy)
    floor = _floor(groups) if log else None
    focus = _focus_range(groups, floor)
    handles = [entry for index, (group, style) in enumerate(zip(groups, styles))
               for entry in _draw_group(ax, state, group, style, index, len(groups), None if log else focus, floor)]
    _mark_nonfinite(ax, state, groups, styles)
    if values:
        band = _scale(ax, values, focus, floor, noisy)
        if band is not None:
            shade = ax.axhspan(*band, color="0.9", zorder=0, linewidth=0, label="grey band: log scale compressed")
            state.artists.append(shade)
            handles.append((shade, shade.get_label()))
    else:
        state.artists.append(ax.text(0.5, 0.5, "no finite value to plot:\nevery run was non-finite from its first "
                                     "step or raised", transform=ax.transAxes, ha="center", va="center",
                                     color="dimgray", fontsize=FONT_SIZES["note"]))
        marks = [group.lead.run.first_nonfinite_step or len(group.lead.run.losses) for group in groups]
        ax.set_xlim(min(marks) - 1, max(marks) + 1)
    smoothing = {one.smooth for one in state.series if one.smooth > 1}
    if smoothing:
        ax.set_ylabel(f"{state.ylabel} ({'/'.join(map(str, sorted(smoothing)))}-step mean)")
    else:
        ax.set_ylabel(state.ylabel)
    _font(ax)
    ax.legend([handle for handle, _ in handles], [label for _, label in handles], fontsize=FONT_SIZES["legend"])


def _font(ax: Axes) -> None:
    """Projector-sized text on one axis (``FONT_SIZES``)."""
    ax.tick_params(labelsize=FONT_SIZES["tick"])
    ax.xaxis.label.set_size(FONT_SIZES["label"])
    ax.yaxis.label.set_size(FONT_SIZES["label"])
    ax.title.set_size(FONT_SIZES["title"])


def projector_text():
    """A context in which hand-drawn figures get the projector-sized text of this module's own figures.

    ``with projector_text(): fig, ax = plt.subplots() ...``: matplotlib's defaults (10 pt) are unreadable from
    the back of a room; this is ``plt.rc_context(PROJECTOR_RC)``, so nothing outside the ``with`` changes.
    """
    return plt.rc_context(PROJECTOR_RC)


def _spans_decades(values: list[float]) -> bool:
    magnitudes = [abs(value) for value in values if value != 0]
    return bool(magnitudes) and max(magnitudes) / min(magnitudes) > 100


def _plot(ax: Axes | None, run: Run, values: Sequence[float], colour: str | None, smooth: int | str,
          name: str, title: str) -> Axes:
    ax = ax or plt.figure(figsize=(6.5, 4.6), layout="constrained").gca()
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
    ax = ax or plt.figure(figsize=(5, 3.5), layout="constrained").gca()
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
            ax.text(0.02, row, f"no score: {reason}", va="center", fontsize=FONT_SIZES["note"], color=colour)
        else:
            drawn = max(run.score, SCORE_FLOOR)  # an R^2 of -400 would squash every other bar
            ax.barh(row, drawn, color=colour, hatch="//" if is_wrong_fix(run) else None, alpha=0.85)
            shown = round(run.score, 2) + 0.0  # + 0.0: no "-0.00" for a score just below zero
            ax.text(_score_label_x(drawn, pass_score, span), row, f" {shown:.2f}", va="center",
                    fontsize=FONT_SIZES["note"])
    ax.set_yticks(range(rows), [run.setting for run in reversed(runs)])
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
    _font(ax)
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

    for name in (run.cause, run.cause.split(" (")[0]):  # "huge-labels (regression)": a side experiment of a cause
        try:
            return get_cause(name)
        except NanlabError:
            pass
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
    per_inch = 72 / (0.55 * FONT_SIZES["legend"])  # characters per inch: a character is about 0.55 em wide
    columns = max(1, min(3, len(entries), int(figure.get_figwidth() * per_inch / widest)))
    figure.legend(list(entries.values()), list(entries), loc="outside lower center", fontsize=FONT_SIZES["legend"],
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
    colours = [one.drawn for one in loss_state.series]
    for one, colour in zip(norm_state.series, colours):
        one.colour = colour  # the gradient-norm panel draws each run in its loss colour
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
    figure.suptitle(f"{first.cause}: {what} ({first.framework}, {first.device}, seed {first.seed})",
                    fontsize=FONT_SIZES["suptitle"])
    loss_ax.set_title("loss", fontsize=FONT_SIZES["title"])
    norm_ax.set_title("gradient norm", fontsize=FONT_SIZES["title"])
    return figure
