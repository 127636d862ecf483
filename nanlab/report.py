"""What a watch found at the first non-finite step, and which catalogue cause the evidence points to.

Framework-neutral: the PyTorch and Keras watches fill a ``NonFiniteReport`` from their replay of the failing step;
``name_cause`` reads the report and the recorded history. The rules are deliberately few and each one names the
evidence it used, so that a student can check the verdict; when no rule fits, the verdict says "unclear".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

PHASES = ("data", "forward", "loss", "backward", "optimizer update")

# Ops whose derivative or value is infinite at a finite argument: the forward (or backward) goes non-finite from
# finite inputs. Names are the framework's own op names, lower-cased, with the Python operator aliases mapped.
LOG_OPS = {"log", "log2", "log10", "log1p", "xlogy", "binary_cross_entropy", "bce"}
DIVISION_OPS = {"div", "true_divide", "truediv", "divide", "reciprocal", "rsqrt", "sqrt", "pow", "realdiv",
                "divnonan", "floordiv", "norm", "normalize", "cosine_similarity", "std", "var"}
RECURRENT_HINTS = ("rnn", "lstm", "gru", "recurrent", "cell")
GROWTH_FACTOR = 100.0  # gradient norm growth over the recorded steps that counts as "exploding"
MIN_GROWTH_STEPS = 3


@dataclass
class NonFiniteReport:
    """Where and why training first went non-finite.

    ``step`` counts optimizer steps from 0, as the nanlab loops do. ``phase`` is one of ``PHASES``. ``module`` is
    the module/layer path and ``op`` the operation (e.g. ``head`` / ``log``) where a finite input first gave a
    non-finite output; ``parameter`` is the first parameter whose gradient went non-finite (or whose update did);
    ``samples`` are the batch indices that carry the problem. ``cause`` is a catalogue id or None, with
    ``cause_reason`` saying which evidence led there ("unclear: ..." when it is weak). ``grad_norms`` is the history
    of ``norm_name`` per healthy step: the gradient norm (PyTorch) or the update norm (Keras, whose ``fit`` exposes
    no gradients).
    """

    framework: str
    step: int
    phase: str
    module: str | None = None
    op: str | None = None
    parameter: str | None = None
    samples: list[int] = field(default_factory=list)
    value: str | None = None
    op_inputs: list[dict] = field(default_factory=list)
    data_findings: list[str] = field(default_factory=list)
    label_problem: str | None = None
    huge_targets: bool = False
    symmetric_labels: bool = False
    recurrent: bool = False
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    norm_name: str = "gradient norm"
    batch_size: int | None = None
    cause: str | None = None
    cause_reason: str = ""
    cause_notebook: str | None = None
    note: str | None = None

    def where(self) -> str:
        parts = [f"`{self.module}`" if self.module else None, f"op `{self.op}`" if self.op else None]
        return " / ".join(part for part in parts if part) or "an unlocated op"

    def __str__(self) -> str:
        value = f" ({self.value})" if self.value else ""
        if self.phase == "data":
            first = f"Step {self.step}: the batch itself is bad{value}: {'; '.join(self.data_findings)}"
        elif self.phase == "optimizer update":
            first = (f"Step {self.step}: loss and gradients were finite but the optimizer update made "
                     f"`{self.parameter}` non-finite")
        else:
            what = "the loss" if self.phase == "loss" else f"the {self.phase} pass"
            first = f"Step {self.step}: {what} went non-finite{value} at {self.where()}"
            if self.parameter:
                first += f", and `{self.parameter}` was the first parameter whose gradient went non-finite"
        if self.samples and self.phase != "data" and len(self.samples) == self.batch_size:
            first += "; every sample in the batch carries it"
        elif len(self.samples) == 1 and self.phase != "data":
            first += f"; sample {self.samples[0]} of the batch carries it"
        elif self.samples and self.phase != "data":
            first += f"; samples {_list(self.samples)} of the batch carry it"
        if self.cause:
            notebook = f" (see {self.cause_notebook})" if self.cause_notebook else ""
            second = f"Likely cause: {self.cause}{notebook}, because {self.cause_reason}."
        else:
            second = f"Likely cause: {self.cause_reason}."
        note = f" {self.note}" if self.note else ""
        return f"{first}. {second}{note}"

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _list(indices: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(index) for index in indices[:limit])
    return shown + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


def gradient_growth(grad_norms: list[float]) -> float | None:
    """How many times the gradient norm grew from the first recorded step to the largest finite one before the NaN.

    None when fewer than ``MIN_GROWTH_STEPS`` finite norms were recorded (too little history to call a trend).
    """
    finite = [norm for norm in grad_norms if math.isfinite(norm)]
    if len(finite) < MIN_GROWTH_STEPS or finite[0] <= 0:
        return None
    return max(finite) / finite[0]


def name_cause(report: NonFiniteReport) -> tuple[str | None, str]:
    """The catalogue cause id the evidence points to, and the evidence in words (or ``None, "unclear: ..."``)."""
    op = (report.op or "").lower()
    growth = gradient_growth(report.grad_norms)
    exploding = growth is not None and growth >= GROWTH_FACTOR
    if report.symmetric_labels:
        return "symmetric-labels", ("the targets are -1/+1, but the loss expects 0/1 (a log loss then rewards "
                                    "driving a probability to 0, and log(0) = -inf)")
    if report.label_problem:
        return "huge-labels", f"the batch has {report.label_problem}"
    if report.huge_targets and report.phase in ("loss", "backward", "forward", "optimizer update"):
        return "huge-labels", "the regression targets are huge (|y| > 1e4), so the squared error overflows"
    if report.phase == "data":
        return None, "unclear: the batch holds non-finite inputs; no catalogue cause covers bad raw data yet"
    zero_input = any(entry.get("zeros") for entry in report.op_inputs)
    negative_input = any(entry.get("negatives") for entry in report.op_inputs)
    if op in LOG_OPS and report.phase in ("forward", "loss", "backward"):
        if zero_input or report.value == "-inf" or report.phase == "backward":
            return "log-of-zero", f"`{report.op}` got an exact 0 (a probability that underflowed)"
        if negative_input:
            return None, f"unclear: `{report.op}` got negative inputs, which is not a log of zero"
    if op in DIVISION_OPS and report.phase in ("forward", "loss", "backward") and zero_input:
        return "division-by-zero", f"`{report.op}` divided by (or took the root of) an exact 0"
    if report.recurrent:
        trend = f"; the {report.norm_name} grew {growth:.3g}x before it" if exploding else ""
        return ("exploding-rnn-gradients",
                f"it overflowed inside a recurrent layer, which multiplies the hidden state (forward) and its "
                f"gradient (backward) by the recurrent weights once per time step{trend}")
    if exploding:
        return "high-learning-rate", (f"the {report.norm_name} grew {growth:.3g}x over the {len(report.grad_norms)} "
                                      "steps before the NaN: each update overshoots")
    history = ("there are too few steps of history to see a trend" if growth is None
               else f"the {report.norm_name} grew only {growth:.3g}x, so nothing was exploding")
    return None, (f"unclear: no catalogue rule fits a non-finite {report.phase} at {report.where()}, and "
                  f"{history}")


def conclude(report: NonFiniteReport) -> NonFiniteReport:
    """Fill ``cause``, ``cause_reason`` and ``cause_notebook`` from the rest of the report."""
    from nanlab.registry import list_causes

    report.cause, report.cause_reason = name_cause(report)
    causes = {cause.id: cause for cause in list_causes()}
    if report.cause in causes:
        report.cause_notebook = causes[report.cause].notebooks.get(report.framework)
    return report


def is_recurrent(name: str | None) -> bool:
    return bool(name) and any(hint in name.lower() for hint in RECURRENT_HINTS)
