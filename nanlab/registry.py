"""The catalogue of causes: what each one is, which fixes it has, and where its code and notebooks live.

A cause lives in its own package under ``nanlab/causes/``. Its ``__init__`` declares ``CAUSE`` (framework-neutral
facts and the data it trains on); ``<framework>_recipe.py`` holds the broken setting and the fixes for each framework
the cause lists; ``rule.py`` holds its diagnosis rule. The registry discovers the packages, so adding a cause
touches no shared list.
"""
from __future__ import annotations

import importlib
import math
import pkgutil
from dataclasses import dataclass, field
from types import ModuleType

from nanlab.errors import NanlabError
from nanlab.frameworks import Framework, get_framework

DEFAULT_SEEDS = tuple(range(10))


@dataclass(frozen=True)
class Fix:
    """One way out of a cause, or a popular wrong one.

    ``hides_problem`` marks a wrong fix. By default it stays finite but stops learning; with ``still_nonfinite``
    it only looks like a fix (the loss prints finite while the gradient is NaN, or the NaN merely comes later) and
    the run still goes non-finite within the budget; with ``learns_anyway`` it passes the learning bar while
    costing what the bar does not measure (clipped logits cap every probability), so the contract checks that it
    stays finite and learns, and figures still draw it as a wrong fix.
    """

    id: str
    title: str
    hides_problem: bool = False
    still_nonfinite: bool = False
    learns_anyway: bool = False

    def __post_init__(self):
        for modifier in ("still_nonfinite", "learns_anyway"):
            if getattr(self, modifier) and not self.hides_problem:
                raise ValueError(f"fix {self.id!r}: {modifier} marks a wrong fix, so it needs hides_problem=True")


@dataclass(frozen=True)
class Cause:
    """A reproducible reason for NaN/Inf loss.

    ``frameworks`` names the frameworks it has a recipe for (``<name>_recipe.py`` in its package); ``seeds`` are
    the random seeds the reproduction contract is verified on; ``steps`` is the step budget within
    which the broken setting must go non-finite and over which every fix trains. A run has ``learned`` when its
    losses stay finite, its last losses average below ``loss_drop`` times its first, and its held-out
    ``score_name`` reaches ``pass_score``. ``asides`` are settings its notebooks run beside the broken one and
    the fixes (Adam on the regression cousin's 1e10 targets), marked as fixes are so that figures draw a wrong one
    as wrong; ``verify`` does not run them.
    """

    id: str
    number: int
    title: str
    mechanism: str
    when: str
    symptom: str
    fixes: tuple[Fix, ...]
    frameworks: tuple[str, ...]
    steps: int
    score_name: str
    pass_score: float
    loss_drop: float = 0.5
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    sources: tuple[str, ...] = ()
    asides: tuple[Fix, ...] = ()
    package: str = field(default="", compare=False)

    @property
    def fix_ids(self) -> tuple[str, ...]:
        return tuple(fix.id for fix in self.fixes)

    @property
    def notebooks(self) -> dict[str, str]:
        """Notebook path per framework, relative to the repository root."""
        return {name: get_framework(name).notebook(self.number, self.id) for name in self.frameworks}

    def fix(self, fix_id: str) -> Fix:
        for fix in self.fixes:
            if fix.id == fix_id:
                return fix
        raise NanlabError(
            f"unknown fix {fix_id!r} for cause {self.id!r}; valid fixes: {', '.join(self.fix_ids)}"
        )

    def framework(self, framework: str | Framework) -> Framework:
        """Resolve ``framework`` and check this cause has a recipe for it, or say which frameworks it has."""
        resolved = get_framework(framework)
        if resolved.name not in self.frameworks:
            raise NanlabError(
                f"cause {self.id!r} has no {resolved.name} recipe; it has: {', '.join(self.frameworks)}"
            )
        return resolved

    def recipe(self, framework: str | Framework) -> ModuleType:
        """The module holding this cause's broken setting and fixes for one framework (imports that framework)."""
        resolved = self.framework(framework)
        resolved.loop  # a missing framework is a one-line install hint, not a traceback from the recipe
        return importlib.import_module(f"{self.package}.{resolved.name}_recipe")

    @property
    def rule(self):
        """This cause's diagnosis rule, ``diagnose(report) -> Verdict | None`` from its ``rule.py``; None without
        one."""
        try:
            module = importlib.import_module(f"{self.package}.rule")
        except ModuleNotFoundError as missing:
            if missing.name != f"{self.package}.rule":
                raise
            return None
        return module.diagnose

    def judge_learning(self, losses: list[float], score: float | None) -> bool:
        """True when a run made real progress: finite losses that fell, and a held-out score past the bar."""
        if score is None or not losses or not all(math.isfinite(loss) for loss in losses):
            return False
        tail = losses[-max(1, len(losses) // 10):]
        return sum(tail) / len(tail) < self.loss_drop * losses[0] and score >= self.pass_score


def _discover() -> dict[str, Cause]:
    import nanlab.causes as causes_package

    found = {}
    for info in pkgutil.iter_modules(causes_package.__path__):
        module = importlib.import_module(f"{causes_package.__name__}.{info.name}")
        cause = getattr(module, "CAUSE", None)
        if isinstance(cause, Cause):
            found[cause.id] = cause
    return dict(sorted(found.items(), key=lambda item: item[1].number))


_CAUSES: dict[str, Cause] | None = None


def _registry() -> dict[str, Cause]:
    global _CAUSES
    if _CAUSES is None:
        _CAUSES = _discover()
    return _CAUSES


def list_causes() -> list[Cause]:
    """Every registered cause, in catalogue order."""
    return list(_registry().values())


def get_cause(cause: str | Cause) -> Cause:
    """Look a cause up by id, or say which ids are valid."""
    if isinstance(cause, Cause):
        return cause
    causes = _registry()
    if cause not in causes:
        raise NanlabError(f"unknown cause {cause!r}; valid causes: {', '.join(causes)}")
    return causes[cause]
