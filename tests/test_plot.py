"""Plot helpers: non-finite points are left out, and ``smooth`` draws running means of the finite values."""
import io
import warnings

import matplotlib

matplotlib.use("Agg")

from nanlab.plot import _finite_points, plot_comparison  # noqa: E402
from nanlab.run import Run  # noqa: E402


def test_finite_points_skip_nonfinite_values_and_smooth_over_the_finite_ones():
    values = [1.0, 3.0, float("nan"), 5.0, 7.0, float("inf")]
    assert _finite_points(values) == ([0, 1, 3, 4], [1.0, 3.0, 5.0, 7.0])
    assert _finite_points(values, smooth=2) == ([0, 1, 3, 4], [1.0, 2.0, 4.0, 6.0])


def test_plot_comparison_labels_smoothed_axes():
    runs = [Run("c", "torch", "cpu", 0, None, 3, losses=[1.0, 0.5, float("nan")], grad_norms=[1.0, 2.0, float("nan")],
                first_nonfinite_step=2),
            Run("c", "torch", "cpu", 0, "fix", 3, losses=[1.0, 0.5, 0.25], grad_norms=[1.0, 0.5, 0.25])]
    loss_ax, norm_ax = plot_comparison(runs, smooth=10).axes
    assert loss_ax.get_ylabel() == "loss (10-step mean)" and norm_ax.get_ylabel() == "gradient norm (10-step mean)"
    assert plot_comparison(runs).axes[0].get_ylabel() == "loss"


def test_a_run_that_is_non_finite_from_step_0_still_plots():
    broken = Run("c", "torch", "cpu", 0, None, 3, losses=[float("nan")], grad_norms=[float("nan")],
                 first_nonfinite_step=0)
    fixed = Run("c", "torch", "cpu", 0, "fix", 3, losses=[1.0, 0.5, 0.25], grad_norms=[1.0, 0.5, 0.25])
    for runs in ([broken], [broken, fixed]):
        figure = plot_comparison(runs)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. "constrained_layout not applied"
            figure.savefig(io.BytesIO(), format="png")
    assert figure.axes[0].get_yscale() == "log"
