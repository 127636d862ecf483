"""What a watch found at the first non-finite step, and which catalogue cause the evidence points to.

Framework-neutral: every framework's watch fills a ``NonFiniteReport`` with the evidence from its replay of the
failing step, in the vocabulary of ``nanlab.watching.vocabulary`` (phase, op family, input statistics, optimizer
facts, dtype limits); ``nanlab.watching.conclude`` asks every cause's rule (``nanlab.diagnosis``) which cause that
evidence points to. Each verdict names the evidence it used, so that a student can check it; when no rule fits, it
says "unclear".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from nanlab.evidence import listed
from nanlab.watching.vocabulary import PHASES, ActivationMax, InputStats, OpFamily, OptimizerFacts, Phase

__all__ = ["PHASES", "NonFiniteReport", "gradient_growth", "is_recurrent", "spoiled_by_update"]
RECURRENT_HINTS = ("rnn", "lstm", "gru", "recurrent", "cell")
GROWTH_FACTOR = 100.0  # gradient norm growth over the recorded steps that counts as "exploding"
MIN_GROWTH_STEPS = 3
LISTED_ACTIVATIONS = 12  # modules shown by ``activations()``: those nearest their dtype's limit, in call order


@dataclass
class NonFiniteReport:
    """Where and why training first went non-finite.

    ``step`` counts optimizer steps from 0, as the nanlab loops do. ``phase`` is a ``Phase`` (a string, one of
    ``PHASES``). ``module`` is the module/layer path and ``op`` the operation as the framework names it (e.g.
    ``head`` / ``log``) where a finite input first gave a non-finite output; ``op_family`` is that op in the shared
    vocabulary (``OpFamily``: what rules read), ``op_inputs`` an ``InputStats`` per input (for a backward culprit,
    the inputs of the forward op whose gradient went bad); ``parameter`` is the first parameter whose gradient went
    non-finite (or whose update did); ``samples`` are the batch indices that carry the problem. ``cause`` is a
    catalogue id or None, with ``cause_reason`` saying which evidence led there ("unclear: ..." when it is weak).
    Under torch.distributed,
    ``rank`` is the rank whose evidence the report gives and ``ranks`` every rank where the first non-finite value
    appeared; with gradient accumulation, ``micro_batch`` is the micro-batch of the update (from 0) that carries
    it (None when the update had one). ``grad_norms`` is the global gradient norm per healthy step, in unscaled
    units under a loss scaler, in both frameworks (``norm_name`` says so in the sentences); with ``loss_scales``
    and ``spikes`` they are the approach to the failure (``approach()``), beside the crossing; ``learning_rates``
    is the learning rate each healthy step ran with (a schedule's trajectory). ``activation_maxima`` (an
    ``ActivationMax`` per module, in the order they first ran in the replay) give each module's largest finite
    |output| against its dtype's limit (``activations()``). ``filled_from`` names the op that wrote a deliberate
    fill (-inf, finfo.min: a mask) which the failing op turned into a non-finite value; ``reduced_count`` is how
    many elements each group of the failing statistic (std, var) held (1: the unbiased estimate divides by 0).
    """

    framework: str
    step: int
    phase: Phase
    module: str | None = None
    op: str | None = None
    op_family: OpFamily | None = None
    parameter: str | None = None
    samples: list[int] = field(default_factory=list)
    value: str | None = None
    op_inputs: list[InputStats] = field(default_factory=list)
    data_findings: list[str] = field(default_factory=list)
    label_problem: str | None = None
    huge_targets: bool = False
    symmetric_labels: bool = False
    recurrent: bool = False
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    loss_scales: list[float] = field(default_factory=list)
    spikes: list[dict] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    activation_maxima: list[ActivationMax] = field(default_factory=list)
    filled_from: str | None = None
    reduced_count: int | None = None
    norm_name: str = "gradient norm"
    batch_size: int | None = None
    module_kind: str | None = None
    dtype: str | None = None
    dtype_max: float | None = None
    max_abs: float | None = None
    input_max_abs: float | None = None  # largest finite |x| in the failing batch's model inputs (input scale)
    optimizer: OptimizerFacts | None = None
    loss_scale: float | None = None
    skipped_in_a_row: int = 0
    rank: int | None = None
    ranks: list[int] = field(default_factory=list)
    micro_batch: int | None = None
    cause: str | None = None
    cause_reason: str = ""
    cause_notebook: str | None = None
    runner_up: str | None = None
    runner_up_reason: str | None = None
    verdicts: list[str] = field(default_factory=list)
    note: str | None = None

    # -- evidence the rules read, in one place so that every rule reads it the same way -------------------------
    @property
    def op_name(self) -> str:
        """The failing op, lower-cased ("" when unlocated)."""
        return (self.op or "").lower()

    @property
    def zero_input(self) -> bool:
        """Some input of the failing op held an exact 0."""
        return any(entry.zeros for entry in self.op_inputs)

    @property
    def negative_input(self) -> bool:
        return any(entry.negatives for entry in self.op_inputs)

    @property
    def growth(self) -> float | None:
        """How many times the recorded norm grew before the NaN (``gradient_growth``)."""
        return gradient_growth(self.grad_norms)

    @property
    def exploding(self) -> bool:
        """The recorded norm grew ``GROWTH_FACTOR`` times or more: each update overshot."""
        return self.growth is not None and self.growth >= GROWTH_FACTOR

    def unclear_reason(self) -> str:
        """The reason given when no cause's rule fits."""
        if self.phase == "data":
            return "unclear: the batch itself is bad, and no catalogue rule fits what is wrong with it"
        growth = self.growth
        history = ("there are too few steps of history to see a trend" if growth is None
                   else f"the {self.norm_name} grew only {growth:.3g}x, so nothing was exploding")
        return f"unclear: no catalogue rule fits a non-finite {self.phase} at {self.where()}, and {history}"

    def approach(self, last: int = 10) -> str:
        """The trajectory before the crossing, not only the crossing: the last ``last`` healthy steps' loss,
        gradient norm, loss scale and learning rate (one line each, oldest first), the spikes the watch saw on the
        way (``spike_threshold``), and each module's largest activation in the replay (``activations()``).
        ``losses`` and ``grad_norms`` hold the healthy steps in order, so their last entries are the steps just
        before this one (skipped steps have none)."""
        count = min(last, len(self.grad_norms))
        activations = self.activations()
        if not count:
            return "\n".join([f"No healthy step was recorded before step {self.step}."] +
                             ([activations] if activations else []))
        lines = [f"The last {count} healthy steps before step {self.step}:"]
        losses = self.losses[-count:] if len(self.losses) >= count else [None] * count
        scales = self.loss_scales[-count:] if len(self.loss_scales) >= count else [None] * count
        rates = self.learning_rates[-count:] if len(self.learning_rates) >= count else [None] * count
        for loss, norm, scale, rate in zip(losses, self.grad_norms[-count:], scales, rates):
            parts = [f"loss {loss:.4g}" if loss is not None else None, f"{self.norm_name} {norm:.4g}",
                     f"loss scale {scale:g}" if scale is not None else None,
                     f"learning rate {rate:.3g}" if rate is not None else None]
            lines.append("  " + ", ".join(part for part in parts if part))
        for spike in self.spikes:
            lines.append(f"  spike at step {spike['step']}: {spike['signal']} {spike['value']:.3g}, "
                         f"{spike['z']:.1f} standard deviations above its running level {spike['mean']:.3g}")
        return "\n".join(lines + ([activations] if activations else []))

    def activations(self, listed_at_most: int = LISTED_ACTIVATIONS) -> str:
        """The replay's largest finite |output| per module against its dtype's largest value, one line each (in the
        order the modules ran; the ``listed_at_most`` nearest their limit where there are more): how close each
        came to overflowing, as Hugging Face's ``DebugUnderflowOverflow`` shows. "" when none was recorded."""
        if not self.activation_maxima:
            return ""
        def nearness(entry: ActivationMax) -> float:
            return math.inf if entry.nonfinite else (entry.fraction or 0.0)
        kept = sorted(self.activation_maxima, key=nearness, reverse=True)[:listed_at_most]
        shown = [entry for entry in self.activation_maxima if entry in kept]
        lines = [f"Largest finite |output| per module in the replay of step {self.step}, against its dtype's limit:"]
        for entry in shown:
            largest = f"{entry.max_abs:.3g}" if entry.max_abs is not None else "none finite"
            share = f" ({entry.fraction:.2g} of {entry.limit:.4g})" if entry.fraction is not None else ""
            bad = f", {entry.nonfinite} non-finite" if entry.nonfinite else ""
            lines.append(f"  `{entry.module}` {entry.dtype}: {largest}{share}{bad}")
        if len(shown) < len(self.activation_maxima):
            lines.append(f"  ({len(self.activation_maxima) - len(shown)} more modules, further from their limit)")
        return "\n".join(lines)

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
            first += f"; samples {listed(self.samples)} of the batch carry it"
        if self.cause:
            notebook = f" (see {self.cause_notebook})" if self.cause_notebook else ""
            second = f"Likely cause: {self.cause}{notebook}, because {self.cause_reason}"
            if self.runner_up:
                second += f"; also consistent with {self.runner_up}, because {self.runner_up_reason}"
            second += "."
        else:
            second = f"Likely cause: {self.cause_reason}."
        note = f" {self.note}" if self.note else ""
        return f"{first}. {second}{note}"

    def __post_init__(self):
        self.phase = Phase(self.phase)
        if self.op_family is not None:
            self.op_family = OpFamily(self.op_family)

    def to_dict(self) -> dict:
        """Plain, JSON-ready values (the vocabulary's records as dicts, enums as their strings)."""
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values["phase"] = str(self.phase)
        values["op_family"] = str(self.op_family) if self.op_family is not None else None
        values["op_inputs"] = [vars(entry).copy() for entry in self.op_inputs]
        values["optimizer"] = self.optimizer.to_dict() if self.optimizer is not None else None
        values["activation_maxima"] = [entry.to_dict() for entry in self.activation_maxima]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "NonFiniteReport":
        """The report ``to_dict`` gave (e.g. gathered from another rank)."""
        values = dict(values)
        values["op_inputs"] = [InputStats.from_dict(entry) for entry in values.get("op_inputs") or []]
        if values.get("optimizer") is not None:
            values["optimizer"] = OptimizerFacts.from_dict(values["optimizer"])
        values["activation_maxima"] = [ActivationMax.from_dict(entry)
                                       for entry in values.get("activation_maxima") or []]
        return cls(**values)


def spoiled_by_update(found_at: int, parameter: str) -> str:
    """The note of an "optimizer update" report found at a later bad step (the same words in every framework)."""
    return (f"Found at step {found_at}, when the loss or gradients went non-finite: the update of step "
            f"{max(found_at - 1, 0)} (or an earlier one, if `{parameter}` took no part since) made it non-finite.")


def gradient_growth(grad_norms: list[float]) -> float | None:
    """How many times the gradient norm grew from the first recorded step to the largest finite one before the NaN.

    None when fewer than ``MIN_GROWTH_STEPS`` finite norms were recorded (too little history to call a trend).
    """
    finite = [norm for norm in grad_norms if math.isfinite(norm)]
    if len(finite) < MIN_GROWTH_STEPS or finite[0] <= 0:
        return None
    return max(finite) / finite[0]



def is_recurrent(name: str | None) -> bool:
    return bool(name) and any(hint in name.lower() for hint in RECURRENT_HINTS)
