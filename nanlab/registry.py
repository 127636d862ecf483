"""The catalogue of causes: what each one is, which fixes it has, and where its code and notebooks live.

A cause lives in its own package under ``nanlab/causes/``. Its ``__init__`` declares ``CAUSE`` (framework-neutral
facts and the data it trains on); ``torch_recipe.py`` and ``tensorflow_recipe.py`` hold the broken setting and the
fixes for each framework. The registry discovers the packages, so adding a cause touches no shared list.
"""
from __future__ import annotations

import importlib
import math
import pkgutil
from dataclasses import dataclass, field
from types import ModuleType

from nanlab.errors import NanlabError

FRAMEWORKS = ("torch", "tensorflow")
FRAMEWORK_ALIASES = {"pytorch": "torch", "tf": "tensorflow", "keras": "tensorflow"}
NOTEBOOK_FOLDERS = {"torch": "pytorch", "tensorflow": "tensorflow"}
DEFAULT_SEEDS = tuple(range(10))


@dataclass(frozen=True)
class Fix:
    """One way out of a cause, or a popular wrong one.

    ``hides_problem`` marks a wrong fix. By default it stays finite but stops learning; with ``still_nonfinite``
    it only looks like a fix (the loss prints finite while the gradient is NaN, or the NaN merely comes later) and
    the run still goes non-finite within the budget.
    """

    id: str
    title: str
    hides_problem: bool = False
    still_nonfinite: bool = False

    def __post_init__(self):
        if self.still_nonfinite and not self.hides_problem:
            raise ValueError(f"fix {self.id!r}: still_nonfinite marks a wrong fix, so it needs hides_problem=True")


@dataclass(frozen=True)
class Cause:
    """A reproducible reason for NaN/Inf loss.

    ``seeds`` are the random seeds the reproduction contract is verified on; ``steps`` is the step budget within
    which the broken setting must go non-finite and over which every fix trains. A run has ``learned`` when its
    losses stay finite, its last losses average below ``loss_drop`` times its first, and its held-out
    ``score_name`` reaches ``pass_score``.
    """

    id: str
    number: int
    title: str
    mechanism: str
    when: str
    symptom: str
    fixes: tuple[Fix, ...]
    steps: int
    score_name: str
    pass_score: float
    loss_drop: float = 0.5
    frameworks: tuple[str, ...] = FRAMEWORKS
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    sources: tuple[str, ...] = ()
    package: str = field(default="", compare=False)

    @property
    def fix_ids(self) -> tuple[str, ...]:
        return tuple(fix.id for fix in self.fixes)

    @property
    def notebooks(self) -> dict[str, str]:
        """Notebook path per framework, relative to the repository root."""
        return {
            framework: f"notebooks/{NOTEBOOK_FOLDERS[framework]}/{self.number:02d}-{self.id}.ipynb"
            for framework in self.frameworks
        }

    def fix(self, fix_id: str) -> Fix:
        for fix in self.fixes:
            if fix.id == fix_id:
                return fix
        raise NanlabError(
            f"unknown fix {fix_id!r} for cause {self.id!r}; valid fixes: {', '.join(self.fix_ids)}"
        )

    def check_framework(self, framework: str) -> str:
        framework = check_framework(framework)
        if framework not in self.frameworks:
            raise NanlabError(
                f"cause {self.id!r} has no {framework} recipe; it has: {', '.join(self.frameworks)}"
            )
        return framework

    def recipe(self, framework: str) -> ModuleType:
        """The module holding this cause's broken setting and fixes for one framework (imports that framework)."""
        framework = self.check_framework(framework)
        return importlib.import_module(f"{self.package}.{framework}_recipe")

    def judge_learning(self, losses: list[float], score: float | None) -> bool:
        """True when a run made real progress: finite losses that fell, and a held-out score past the bar."""
        if score is None or not losses or not all(math.isfinite(loss) for loss in losses):
            return False
        tail = losses[-max(1, len(losses) // 10):]
        return sum(tail) / len(tail) < self.loss_drop * losses[0] and score >= self.pass_score


def check_framework(framework: str) -> str:
    """Normalise a framework name (``pytorch`` → ``torch``, ``tf``/``keras`` → ``tensorflow``) or say what is valid."""
    name = FRAMEWORK_ALIASES.get(str(framework).lower(), str(framework).lower())
    if name not in FRAMEWORKS:
        raise NanlabError(f"unknown framework {framework!r}; valid frameworks: {', '.join(FRAMEWORKS)}")
    return name


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
