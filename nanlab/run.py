"""The record of one reproduction run."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class History:
    """What a training loop recorded: loss and global gradient norm per step, and the first non-finite step."""

    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    first_nonfinite_step: int | None = None

    def record(self, loss: float, grad_norm: float) -> bool:
        """Append one step; False (stop training) when its loss or gradient norm is NaN/Inf."""
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)
        if math.isfinite(loss) and math.isfinite(grad_norm):
            return True
        self.first_nonfinite_step = len(self.losses) - 1
        return False


@dataclass
class Run:
    """What one run of one setting of one cause did.

    Steps count from 0: ``losses[k]`` is the loss of the k-th batch. ``first_nonfinite_step`` is the first step
    whose loss or gradient held NaN/Inf (training stops there); ``error`` is the exception class name when the
    device raised instead of producing NaN (e.g. out-of-range labels on CPU), with its first line in
    ``error_message``; the step that raised is then ``len(losses)``, after the steps that ran. ``score`` is the
    held-out score (``score_name``) after training, None when the run did not finish finite. ``learned`` follows
    the cause's rule (``Cause.judge_learning``).
    """

    cause: str
    framework: str
    device: str
    seed: int
    fix: str | None
    steps: int
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    first_nonfinite_step: int | None = None
    error: str | None = None
    error_message: str | None = None
    score: float | None = None
    score_name: str = ""
    learned: bool = False

    @property
    def setting(self) -> str:
        """``broken`` or the fix id."""
        return self.fix or "broken"

    @property
    def finite(self) -> bool:
        """True when the run finished without NaN/Inf and without the device raising."""
        return self.first_nonfinite_step is None and self.error is None

    def to_dict(self) -> dict:
        """A JSON-ready dict; NaN and Inf become the strings "nan", "inf", "-inf" (JSON has no such numbers)."""
        record = asdict(self)
        record["losses"] = [_json_number(value) for value in self.losses]
        record["grad_norms"] = [_json_number(value) for value in self.grad_norms]
        return record

    def summary(self) -> str:
        """One sentence on what happened."""
        label = f"{self.cause} [{self.setting}] on {self.framework}/{self.device}, seed {self.seed}"
        if self.error:
            return f"{label}: the device raised {self.error} ({self.error_message})."
        if self.first_nonfinite_step is not None:
            last_finite = _last_finite(self.losses)
            before = f" after the loss reached {last_finite:.3g}" if last_finite is not None else ""
            return (f"{label}: went non-finite at step {self.first_nonfinite_step} of {self.steps}{before}.")
        verdict = "learned" if self.learned else "did NOT learn"
        score = f"{self.score_name} {self.score:.3f}" if self.score is not None else "no score"
        return (f"{label}: finite for {self.steps} steps, loss {self.losses[0]:.3g} -> {self.losses[-1]:.3g}, "
                f"{score}; {verdict}.")


def _json_number(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def _last_finite(values: list[float]) -> float | None:
    finite = [value for value in values if math.isfinite(value)]
    return finite[-1] if finite else None
