"""Plot helpers keep their rules, checked on the matplotlib objects: every run visible, a wrong fix in a style of
its own, identical runs merged with a note, a held-out score panel where the loss hides the lesson, y-ranges that
do not squash the fixes, readable ticks."""
import io
import math
import warnings

import matplotlib
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

import nanlab  # noqa: E402
from nanlab.plot import (BROKEN_COLOUR, FONT_SIZES, _finite_points, plot_comparison, plot_grad_norm,  # noqa: E402
                         plot_loss, plot_scores, set_symlog)
from nanlab.run import Run  # noqa: E402

NAN = float("nan")


def run(fix=None, losses=(1.0, 0.5, 0.25), grad_norms=None, cause="c", nonfinite=None, error=None, score=None,
        learned=False):
    losses = list(losses)
    return Run(cause, "torch", "cpu", 0, fix, len(losses), losses=losses,
               grad_norms=list(grad_norms) if grad_norms is not None else [abs(v) for v in losses],
               first_nonfinite_step=nonfinite, error=error, score=score, score_name="held-out accuracy",
               learned=learned)


def data_lines(ax):
    """Lines that plot data (not the NaN markers, which sit on an axes-fraction transform, nor the vertical marks)."""
    return [line for line in ax.get_lines() if line.get_transform() == ax.transData and len(line.get_xdata()) and
            line.get_linestyle() != "None"]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_finite_points_skip_nonfinite_values_and_smooth_over_the_finite_ones():
    values = [1.0, 3.0, NAN, 5.0, 7.0, float("inf")]
    assert _finite_points(values) == ([0, 1, 3, 4], [1.0, 3.0, 5.0, 7.0])
    assert _finite_points(values, smooth=2) == ([0, 1, 3, 4], [1.0, 2.0, 4.0, 6.0])


def test_plot_comparison_labels_smoothed_axes():
    runs = [run(losses=[1.0, 0.5, NAN], nonfinite=2), run("fix")]
    loss_ax, norm_ax = plot_comparison(runs, smooth=10).axes
    assert loss_ax.get_ylabel() == "loss (10-step mean)" and norm_ax.get_ylabel() == "gradient norm (10-step mean)"
    assert plot_comparison(runs).axes[0].get_ylabel() == "loss"


def test_a_run_that_is_non_finite_from_step_0_still_plots_and_says_so():
    broken = run(losses=[NAN], nonfinite=0)
    for runs in ([broken], [broken, run("fix")]):
        figure = plot_comparison(runs)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. "constrained_layout not applied"
            figure.savefig(io.BytesIO(), format="png")
    assert figure.axes[0].get_yscale() == "log"
    alone = plot_comparison([broken]).axes[0]
    assert any("no finite value" in text.get_text() for text in alone.texts), "an empty frame says why"


def test_a_run_with_a_single_finite_point_is_a_visible_marker():
    ax = plot_loss(run(losses=[2.0, NAN], nonfinite=1))
    line, = [line for line in ax.get_lines() if list(line.get_xdata()) == [0]]
    assert line.get_marker() not in ("None", "", None) and line.get_markersize() >= 6
    assert ax.get_ylim()[0] < 2.0 < ax.get_ylim()[1]


def test_runs_with_few_points_get_markers_on_every_point():
    ax = plot_loss(run("fix", losses=[1.0, 0.8, 0.6, 0.5]))
    line, = data_lines(ax)
    assert line.get_marker() not in ("None", "") and line.get_markevery() == (0, 1)


def test_a_wrong_fix_has_a_style_of_its_own_never_the_broken_red():
    broken = run(cause="log-of-zero", losses=[1.0, 0.5, NAN], nonfinite=2)
    wrong = run("clip-log-output", cause="log-of-zero", losses=[1.0, 0.7, 0.6])
    real = run("fused-loss", cause="log-of-zero", losses=[1.0, 0.4, 0.2])
    ax = plot_comparison([broken, wrong, real]).axes[0]
    lines = {line.get_label(): line for line in data_lines(ax)}
    broken_line = next(line for label, line in lines.items() if label.startswith("broken"))
    wrong_line = next(line for label, line in lines.items() if "wrong fix" in label)
    real_line = next(line for label, line in lines.items() if label.startswith("fused-loss"))
    assert broken_line.get_color() == BROKEN_COLOUR and broken_line.get_linestyle() == "-"
    assert wrong_line.get_color() not in (BROKEN_COLOUR, real_line.get_color())
    assert wrong_line.get_linestyle() == "--" and real_line.get_linestyle() == "-"
    assert len({broken_line.get_marker(), wrong_line.get_marker(), real_line.get_marker()}) == 3


def test_identical_runs_are_drawn_once_with_a_note_in_the_legend():
    fixes = [run(fix) for fix in ("a", "b", "c")]
    figure = plot_comparison(fixes)
    assert len(data_lines(figure.axes[0])) == 1
    labels = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    assert labels == ["a = b = c (same curve)"]
    assert "fixes compared" in figure.get_suptitle(), "no broken run, so not 'broken vs fixes'"


def test_close_runs_carry_markers_at_different_steps():
    fixes = [run(fix, losses=[1.0 - 0.001 * step + shift for step in range(100)]) for fix, shift in
             (("a", 0.0), ("b", 0.02))]
    ax = plot_comparison(fixes).axes[0]
    first, second = data_lines(ax)
    assert first.get_markevery() != second.get_markevery() and first.get_marker() != second.get_marker()


def _height(ax, value):
    """Where ``value`` sits on the y-axis, as a share of the axis's height (0 bottom, 1 top)."""
    return ax.transAxes.inverted().transform(ax.transData.transform((0, value)))[1]


def test_the_broken_climb_shows_on_a_compressed_scale_above_the_fixes():
    broken = run(losses=[1.0, 1e3, 1e9, 1e26, NAN], nonfinite=4)
    fixes = [run("lower-lr", losses=[1.0, 0.5, 0.2, 0.1, 0.05]), run("clip", losses=[1.0, 0.8, 0.6, 0.5, 0.3])]
    figure = plot_comparison([broken, *fixes])
    ax = figure.axes[0]
    figure.canvas.draw()
    assert _height(ax, 1.0) - _height(ax, 0.05) > 0.5, "the fixes (0.05-1) fill half the axis, not a sliver"
    line = next(line for line in data_lines(ax) if line.get_label().startswith("broken"))
    assert list(line.get_ydata()) == [1.0, 1e3, 1e9, 1e26], "the climb is drawn, not clipped"
    climb = [_height(ax, value) for value in line.get_ydata()]
    assert all(b - a > 0.03 for a, b in zip(climb, climb[1:])) and climb[-1] <= 1.0, climb
    assert not [line for line in ax.get_lines() if line.get_marker() == "^" and line.get_linestyle() == "None"], \
        "no off-scale triangles"
    labels = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    assert "grey band: log scale compressed" in labels
    assert not ax.texts, "no note on the data"
    shown = [label.get_text() for label in ax.get_yticklabels() if label.get_text()
             and label.get_position()[1] > 1.6]
    assert len(shown) >= 2, "the band's decades are labelled"


def test_notebook_style_calls_on_one_axis_redraw_with_every_run_in_view():
    _, ax = plt.subplots()
    plot_loss(run(losses=[1.0, 1e20, NAN], nonfinite=2), ax)
    assert ax.get_ylim()[1] > 1e20 and ax.get_yscale() == "log"
    plot_loss(run("fix", losses=[1.0, 0.5, 0.4]), ax)
    ax.figure.canvas.draw()
    assert _height(ax, 1.0) - _height(ax, 0.4) > 0.3, "adding a fix refits the axis to it"
    assert 0.9 < _height(ax, 1e20) <= 1.0, "the broken run's peak is still in view"
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels[:2] == ["broken: non-finite at step 2", "fix"] and labels[2].startswith("grey band")
    ax.legend(loc="upper left")  # a notebook moving the legend keeps every entry, the band's too
    assert [text.get_text() for text in ax.get_legend().get_texts()] == labels


def test_a_linear_axis_puts_the_broken_blow_up_on_its_edge():
    broken = run(losses=[1.0 if step % 2 else 1e-18 for step in range(60)] + [1e26, NAN], nonfinite=61)
    fix = run("fix", losses=[1e-18 if step % 2 else 1.0 for step in range(62)])
    figure = plot_comparison([broken, fix])
    ax = figure.axes[0]
    assert ax.get_yscale() == "linear" and ax.get_ylim()[1] < 10
    labels = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    assert any(label.startswith("broken off scale, up to") for label in labels), "the peak is in the legend"


def test_noisy_long_runs_become_running_means_on_a_linear_axis():
    noisy = run("fix", losses=[1e-18 if step % 2 else 1.0 for step in range(200)])
    calm = run("other", losses=[1.0 / (1 + step) for step in range(200)])
    ax = plot_comparison([noisy, calm]).axes[0]
    assert ax.get_yscale() == "linear" and ax.get_ylabel() == "loss (20-step mean)"
    assert all(max(line.get_ydata()[20:]) < 0.6 for line in data_lines(ax)), "the mean, not the swing"


def test_a_held_out_score_panel_where_the_loss_hides_the_lesson():
    broken = run(cause="symmetric-labels", losses=[NAN], nonfinite=None, error="IndexError")
    real = run("map-labels", cause="symmetric-labels", score=1.0, learned=True)
    wrong = run("wrapping-gather", cause="symmetric-labels", score=0.73)
    figure = plot_comparison([broken, real, wrong])
    assert len(figure.axes) == 3, "a wrong fix that stays finite brings the score panel in"
    scores = figure.axes[2]
    assert sorted(round(bar.get_width(), 2) for bar in scores.patches) == [0.73, 1.0]
    assert any("raised IndexError" in text.get_text() for text in scores.texts)
    assert [line.get_xdata()[0] for line in scores.get_lines()] == [0.8], "the cause's pass mark"
    assert len(plot_comparison([broken, real, wrong], metric=False).axes) == 2
    assert len(plot_comparison([broken, real], metric=True).axes) == 3


def test_a_log_axis_over_a_narrow_range_has_several_labelled_ticks():
    ax = plot_loss(run("fix", losses=[1.47, 1.2, 1.0, 0.9, 0.77]))
    ax.figure.canvas.draw()
    low, high = ax.get_ylim()
    labelled = [label for label in ax.yaxis.get_majorticklabels()
                if label.get_text() and low <= label.get_position()[1] <= high]
    assert ax.get_yscale() == "log" and len(labelled) >= 2


def _overlaps(labels):
    boxes = sorted((label.get_window_extent() for label in labels if label.get_text()), key=lambda box: box.y0)
    return [(a, b) for a, b in zip(boxes, boxes[1:]) if a.y1 > b.y0 + 0.5]


def test_tick_labels_do_not_overlap_on_wide_log_and_symlog_axes():
    ax = plot_grad_norm(run("fix", losses=[1e-45 * 10 ** (step / 2) for step in range(100)]))
    ax.figure.canvas.draw()
    assert not _overlaps(ax.yaxis.get_majorticklabels())
    _, symlog_ax = plt.subplots(figsize=(6, 3.5))
    symlog_ax.plot(range(5), [-1e12, -1.0, 0.0, 1.0, 1e12])
    set_symlog(symlog_ax, linthresh=1.0)
    symlog_ax.figure.canvas.draw()
    low, high = symlog_ax.get_ylim()
    shown = [label for label in symlog_ax.yaxis.get_majorticklabels() if low <= label.get_position()[1] <= high]
    assert len(shown) >= 3 and not _overlaps(shown)


def test_score_bars_show_a_hopeless_r_squared_without_squashing_the_others():
    from nanlab.plot import SCORE_FLOOR, plot_scores

    runs = [nanlab.Run("unnormalised-inputs", "torch", "cpu", 0, fix, 5, losses=[1.0] * 5, score=score,
                       score_name="held-out R^2") for fix, score in (("scale-to-unit", 0.97), ("lower-lr", -61.0),
                                                                     ("standardise", -0.001))]
    ax = plot_scores(runs)
    assert ax.get_xlim()[0] >= SCORE_FLOOR * 1.2
    labels = [text.get_text().strip() for text in ax.texts]
    assert "-61.00" in labels and "0.00" in labels and "-0.00" not in labels


def test_a_run_with_exact_zeros_keeps_a_log_axis_with_labelled_ticks():
    from nanlab.plot import plot_grad_norm

    run = nanlab.Run("exploding-rnn-gradients", "tensorflow", "cpu", 0, "clip-grad-norm", 6,
                     losses=[1.0] * 6, grad_norms=[0.0, 1e-3, 2.0, 0.0, 5e2, 1e3])
    ax = plot_grad_norm(run)
    assert ax.get_yscale() == "log"
    ax.figure.canvas.draw()
    assert len([label for label in ax.get_yticklabels() if label.get_text()]) >= 2


def test_two_wrong_fixes_share_the_wrong_fix_colour_but_not_their_style():
    broken = run(None, cause="log-of-zero", losses=[1.0, 0.8, float("nan")])
    first = run("clip-log-output", cause="log-of-zero", losses=[1.0, 0.7, 0.6])
    second = run("float64", cause="log-of-zero", losses=[1.0, 0.75, 0.5])
    lines = [line for line in plot_comparison([broken, first, second]).axes[0].get_lines()
             if line.get_label().startswith(("clip-log-output", "float64"))]
    assert len(lines) == 2 and lines[0].get_color() == lines[1].get_color()
    assert (lines[0].get_linestyle(), lines[0].get_marker()) != (lines[1].get_linestyle(), lines[1].get_marker())


def _style(line):
    return line.get_color(), line.get_linestyle(), line.get_marker()


def test_runs_merge_only_when_identical_in_every_panel_and_keep_one_style_in_all():
    # identical gradient norms, different losses: a wrong fix that changes the loss a little and nothing else
    broken = run(cause="log-of-zero", losses=[1.0, 0.5, NAN], grad_norms=[1.0, 0.5, NAN], nonfinite=2)
    wrong = run("clip-log-output", cause="log-of-zero", losses=[1.0, 0.6, NAN], grad_norms=[1.0, 0.5, NAN],
                nonfinite=2)
    other = run("float64", cause="log-of-zero", losses=[1.0, 0.7, 0.6], grad_norms=[0.9, 0.8, 0.7])
    figure = plot_comparison([broken, wrong, other])
    loss_lines, norm_lines = ({line.get_label(): line for line in data_lines(ax)} for ax in figure.axes[:2])
    assert sorted(loss_lines) == sorted(norm_lines) and len(loss_lines) == 3
    assert all(_style(loss_lines[label]) == _style(norm_lines[label]) for label in loss_lines)
    assert not any(line.get_color() == BROKEN_COLOUR for label, line in norm_lines.items() if "wrong fix" in label)
    labels = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    assert len(labels) == 3 and not any("[" in label for label in labels), "one legend entry per run"


def test_a_few_points_far_below_the_rest_sit_on_the_bottom_edge():
    norms = [10 ** ((step % 7) - 2) for step in range(100)]  # 1e-2 to 1e4
    norms[28], norms[40] = 1e-17, 0.0
    ax = plot_grad_norm(run("clip", losses=[1.0] * 100, grad_norms=norms))
    low, high = ax.get_ylim()
    assert ax.get_yscale() == "log" and 1e-6 <= low < 1e-2 and high > 1e4
    assert "clip below scale, down to 0" in [text.get_text() for text in ax.get_legend().get_texts()]
    edge, = [line for line in ax.get_lines() if line.get_marker() == "v"]
    assert list(edge.get_xdata()) == [28, 40] and list(edge.get_ydata()) == [low, low]


def test_a_log_axis_under_two_decades_labels_its_whole_range():
    ax = plot_grad_norm(run("fix", losses=[0.07 * 1.03 ** step for step in range(75)]))  # 0.07 to 0.6
    ax.figure.canvas.draw()
    low, high = ax.get_ylim()
    ticks = [label.get_position()[1] for label in ax.yaxis.get_majorticklabels()
             if label.get_text() and low <= label.get_position()[1] <= high]
    assert len(ticks) >= 3 and min(ticks) < 0.15, "a labelled tick in the lower part, not only near the top"
    assert not _overlaps(ax.yaxis.get_majorticklabels())


def test_a_title_says_broken_vs_fixes_only_with_a_real_fix_in_it():
    broken = run(cause="log-of-zero", losses=[1.0, 0.5, NAN], nonfinite=2)
    wrong = run("clip-log-output", cause="log-of-zero", losses=[1.0, 0.7, 0.6])
    real = run("fused-loss", cause="log-of-zero", losses=[1.0, 0.4, 0.2])
    assert "broken vs wrong fixes" in plot_comparison([broken, wrong]).get_suptitle()
    assert "broken vs fixes" in plot_comparison([broken, wrong, real]).get_suptitle()


def test_score_bars_take_the_colours_of_the_loss_lines_and_say_where_they_are_cut():
    from nanlab.plot import plot_scores

    runs = [nanlab.Run("unnormalised-inputs", "torch", "cpu", 0, fix, 3, losses=[1.0, 0.5, 0.25 + shift],
                       score=score, score_name="held-out R²")
            for fix, score, shift in (("lower-lr", -42.0, 0.1), ("scale-to-unit", 0.95, 0.0))]
    loss_ax = plot_loss(runs[0])
    plot_loss(runs[1], loss_ax)
    line_colours = {line.get_label().split(",")[0]: line.get_color() for line in data_lines(loss_ax)}
    _, (_, score_ax) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained", width_ratios=[1.4, 1])
    plot_scores(runs, score_ax)
    bar_colours = [matplotlib.colors.to_hex(bar.get_facecolor()[:3]) for bar in score_ax.patches]
    assert bar_colours == [matplotlib.colors.to_hex(colour) for colour in
                           (line_colours["lower-lr (wrong fix)"], line_colours["scale-to-unit"])]
    assert "bars cut at -1" in score_ax.get_xlabel()
    score_ax.figure.canvas.draw()
    boxes = sorted((label.get_window_extent() for label in score_ax.get_xticklabels() if label.get_text()),
                   key=lambda box: box.x0)
    gaps = [second.x0 - first.x1 for first, second in zip(boxes, boxes[1:])]
    assert len(boxes) >= 3 and min(gaps) >= 10, "tick labels apart by a character's width, not touching"


def test_runs_that_agree_to_float32_rounding_are_one_curve():
    fixes = [run("a", losses=[1.0 / (1 + step) for step in range(20)]),
             run("b", losses=[(1.0 + 2.4e-7) / (1 + step) for step in range(20)]),
             run("c", losses=[(1.0 + 0.2) / (1 + step) for step in range(20)])]
    labels = [text.get_text() for legend in plot_comparison(fixes).legends for text in legend.get_texts()]
    assert labels == ["a = b (same curve)", "c"]


def test_the_pass_mark_is_named_in_the_title_and_a_score_just_below_it_is_labelled_past_its_line():
    real = run("map-labels", cause="symmetric-labels", score=1.0, learned=True)
    wrong = run("wrapping-gather", cause="symmetric-labels", score=0.73)
    ax = plot_scores([real, wrong])
    assert "pass mark 0.8" in ax.get_title() and ax.get_legend() is None, "no legend box over the bars"
    label_x = {text.get_text().strip(): text.get_position()[0] for text in ax.texts}
    assert label_x == {"1.00": 1.0, "0.73": 0.8}, "0.73 starts right of the dotted line at 0.8, not across it"


def test_a_log_axis_under_two_and_a_half_decades_is_labelled_at_both_ends():
    for losses in ([1.5 * 0.95 ** step for step in range(80)],  # 1.5 to 0.03: 1.7 decades, once decade ticks only
                   [0.9 - 0.004 * step for step in range(100)],  # 0.9 to 0.5: narrower than 2x
                   [2.393] * 30):  # a flat run: its padded range, 1.51 to 3.79, holds only the ticks 2 and 3
        ax = plot_loss(run("fix", losses=losses))
        ax.figure.canvas.draw()
        low, high = ax.get_ylim()
        ticks = [label.get_position()[1] for label in ax.yaxis.get_majorticklabels()
                 if label.get_text() and low <= label.get_position()[1] <= high]
        assert len(ticks) >= 3 and math.log10(min(ticks) / low) < 0.3 and math.log10(high / max(ticks)) < 0.3, ticks
        assert not _overlaps(ax.yaxis.get_majorticklabels())


def _wrong_fix_style(line):
    from nanlab.plot import WRONG_FIX_COLOUR, WRONG_FIX_LINES

    return matplotlib.colors.to_hex(line.get_color()) == WRONG_FIX_COLOUR and line.get_linestyle() in WRONG_FIX_LINES


def test_a_wrong_fix_is_drawn_as_one_because_the_catalogue_marks_it():
    # clip-logits learns the classes (the contract checks it does), yet caps every probability: a wrong fix
    clipped = run("clip-logits", cause="softmax-overflow", losses=[1.4, 0.6, 0.4], score=0.98, learned=True)
    # side experiments: Adam on the regression cousin's 1e10 targets, Keras' default epsilon in float16
    adam = run("adam", cause="huge-labels (regression)", losses=[2e20, 1.9e20, 1.9e20], score=0.01)
    default_eps = run("keras-default-eps", cause="fp16-adam-epsilon", losses=[1.4, 30.0, 20.0], score=0.3)
    for wrong in (clipped, adam, default_eps):
        assert nanlab.get_cause(wrong.cause.split(" (")[0]) is not None
        ax = plot_loss(wrong, colour="tab:green")  # a colour asked for does not make it a real fix
        line, = data_lines(ax)
        assert _wrong_fix_style(line) and "(wrong fix)" in line.get_label(), wrong.cause
    real = run("subtract-max", cause="softmax-overflow", losses=[1.4, 0.3, 0.1])
    line, = data_lines(plot_loss(real))
    assert not _wrong_fix_style(line)


def test_a_finite_loss_is_drawn_finite_and_the_x_sits_on_the_panel_that_went_non_finite():
    broken = run(cause="masked-attention", losses=[1.4, 1.3, 1.2, NAN], grad_norms=[1.2, 1.0, 1.1, NAN], nonfinite=3)
    wrong = run("nan-to-num", cause="masked-attention", losses=[1.4, 1.3, 1.25, 1.15],
                grad_norms=[1.2, 1.0, 1.1, NAN], nonfinite=3)
    figure = plot_comparison([broken, wrong])
    loss_ax, norm_ax = figure.axes[:2]

    def x_marks(ax):
        return [line for line in ax.get_lines() if line.get_marker() == "X"]

    assert [matplotlib.colors.to_hex(line.get_color()) for line in x_marks(loss_ax)] == [
        matplotlib.colors.to_hex(BROKEN_COLOUR)], "only the broken run's loss went non-finite"
    assert len(x_marks(norm_ax)) == 2, "both runs' gradients did"
    wrong_line = next(line for line in data_lines(loss_ax) if line.get_label().startswith("nan-to-num"))
    assert list(wrong_line.get_xdata())[-1] == 3 and list(wrong_line.get_ydata())[-1] == 1.15, "drawn to its end"
    labels = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    assert any(label.startswith("nan-to-num (wrong fix)") and label.endswith(
        "gradient non-finite at step 3, loss finite") for label in labels), labels


def test_curves_that_overlap_on_screen_are_drawn_once_with_a_note():
    # bfloat16 against a float32 layer: the same curve to within a fraction of a percent, never bit-identical
    fixes = [run("float32-layer", losses=[1.2 * 0.9 ** step for step in range(25)]),
             run("bfloat16", losses=[1.2 * 0.9 ** step * (1 + 0.003 * (-1) ** step) for step in range(25)]),
             run("rescale-input", losses=[1.3 * 0.88 ** step for step in range(25)])]
    figure = plot_comparison(fixes)
    assert len(data_lines(figure.axes[0])) == 2
    labels = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    assert labels == ["float32-layer ≈ bfloat16 (curves overlap)", "rescale-input"]


def test_runs_of_different_kinds_do_not_merge_but_a_run_that_follows_another_is_drawn_from_where_they_part():
    shared = [1.5, 1.0, 0.8, 0.7, 0.6]
    broken = run(cause="dirty-data", losses=[*shared, NAN], nonfinite=5)
    fix = run("drop-corrupt-records", cause="dirty-data", losses=[*shared, 0.5, 0.4, 0.3])
    figure = plot_comparison([broken, fix])
    lines = {line.get_label(): line for line in data_lines(figure.axes[0])}
    assert len(lines) == 2
    fix_line = next(line for label, line in lines.items() if label.startswith("drop-corrupt-records"))
    assert list(fix_line.get_xdata()) == [4, 5, 6, 7], "drawn from the last step it shares with the broken run"
    assert "follows broken to step 4" in fix_line.get_label()


def test_text_is_sized_for_a_projector_and_stays_inside_the_figure():
    broken = run(cause="softmax-overflow", losses=[1.4, 0.7, 0.3, NAN], nonfinite=3)
    fixes = [run(fix, cause="softmax-overflow", losses=[1.4, 0.6 + shift, 0.3 + shift, 0.2], score=0.95,
                 learned=True) for fix, shift in (("subtract-max", 0.0), ("clip-logits", 0.2))]
    figure = plot_comparison([broken, *fixes])
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    frame = figure.bbox
    texts = [text for ax in figure.axes for text in (*ax.get_xticklabels(), *ax.get_yticklabels(), ax.xaxis.label,
                                                     ax.yaxis.label, ax.title, *ax.texts) if text.get_text()]
    texts += [text for legend in figure.legends for text in legend.get_texts()] + [figure._suptitle]
    assert min(text.get_fontsize() for text in texts) >= 12
    boxes = [ax.get_tightbbox(renderer) for ax in figure.axes] + [
        artist.get_window_extent(renderer) for artist in (*figure.legends, figure._suptitle)]
    for box in boxes:  # what is drawn stays inside the figure: nothing cut off at its edges
        assert frame.x0 - 2 <= box.x0 and box.x1 <= frame.x1 + 2 and frame.y0 - 2 <= box.y0 and box.y1 <= frame.y1 + 2
    for ax in figure.axes:
        assert not _overlaps(ax.yaxis.get_majorticklabels())


def test_runs_merged_on_one_panel_but_apart_on_the_other_get_colours_of_their_own():
    # the loss panel alone merges all three (drawn as each run is added); linked to the gradient panel, where c
    # differs, only a and b stay merged: c must not keep the colour of the merged curve
    losses = [1.0 / (1 + step) for step in range(30)]
    fixes = [run("a", losses=losses, grad_norms=losses), run("b", losses=losses, grad_norms=losses),
             run("c", losses=losses, grad_norms=[0.5 * value for value in losses])]
    figure = plot_comparison(fixes)
    for ax in figure.axes[:2]:
        colours = {line.get_label(): line.get_color() for line in data_lines(ax)}
        assert sorted(colours) == ["a = b (same curve)", "c"] and len(set(colours.values())) == 2, colours


def test_projector_text_sizes_a_hand_drawn_figure_like_the_package_figures_and_only_inside_the_with():
    default_ticks = plt.rcParams["xtick.labelsize"]
    with nanlab.plot.projector_text():
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 2], label="run")
        ax.set_title("title")
        legend = ax.legend()
    assert ax.xaxis.get_majorticklabels()[0].get_fontsize() == FONT_SIZES["tick"]
    assert ax.title.get_fontsize() == FONT_SIZES["title"]
    assert legend.get_texts()[0].get_fontsize() == FONT_SIZES["legend"]
    assert plt.rcParams["xtick.labelsize"] == default_ticks != FONT_SIZES["tick"]
