"""``reproduce`` runs one setting of one cause; ``verify`` checks the reproduction contract over seeds.

The contract, per cause × framework × seed × device:
- the broken setting goes non-finite within the cause's step budget, or the device raises the documented error;
- every fix stays finite and learns (``Cause.judge_learning``);
- a fix marked ``hides_problem`` stays finite but does not learn: it hides the NaN instead of curing it;
  one also marked ``still_nonfinite`` goes non-finite all the same (it only looks like a fix); one marked
  ``learns_anyway`` stays finite and learns (its cost is one the learning bar does not measure).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from nanlab.devices import check_device, resolve_device
from nanlab.errors import NanlabError
from nanlab.frameworks import Framework, get_framework, list_frameworks
from nanlab.registry import Cause, get_cause, list_causes
from nanlab.run import History, Run
from nanlab.seeding import check_seed, seed_everything


def reproduce(cause: str | Cause, framework: str | Framework = "torch", device: str = "auto", seed: int = 0,
              fix: str | None = None, steps: int | None = None) -> Run:
    """Run the broken setting of ``cause`` (``fix=None``) or one of its fixes, and record what happened."""
    cause = get_cause(cause)
    framework = cause.framework(framework)
    if fix is not None:
        cause.fix(fix)
    check_seed(seed)
    check_device(device)
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise NanlabError(f"steps must be a positive integer, got {steps!r}")
    loop, recipe = framework.loop, cause.recipe(framework)
    device = resolve_device(device, framework)
    steps = steps or cause.steps
    run = Run(cause=cause.id, framework=framework.name, device=device, seed=seed, fix=fix, steps=steps,
              score_name=cause.score_name)
    seed_everything(seed, framework)
    history = History()  # filled step by step: a run that raises keeps the steps before it
    with framework.backend.on_device(device):
        try:
            training = recipe.SETTINGS[run.setting](seed=seed, device=device)
            loop.train(training, steps, history)
        except getattr(recipe, "EXPECTED_ERRORS", ()) as raised:
            run.error = type(raised).__name__
            run.error_message = str(raised).strip().splitlines()[0] if str(raised).strip() else ""
        run.losses, run.grad_norms = history.losses, history.grad_norms
        if run.error:
            return run
        run.first_nonfinite_step = history.first_nonfinite_step
        if history.first_nonfinite_step is None:
            run.score = training.evaluate(training.model)
    run.learned = cause.judge_learning(run.losses, run.score)
    return run


@dataclass
class ContractRow:
    """The contract checked for one cause × framework × seed × device: the broken run and one run per fix."""

    cause: str
    framework: str
    device: str
    seed: int
    broken: Run
    fixes: dict[str, Run]
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"cause": self.cause, "framework": self.framework, "device": self.device, "seed": self.seed,
                "passed": self.passed, "problems": self.problems, "broken": self.broken.to_dict(),
                "fixes": {fix_id: run.to_dict() for fix_id, run in self.fixes.items()}}


def check_contract(cause: str | Cause, framework: str | Framework, seed: int, device: str = "auto") -> ContractRow:
    """Run the broken setting and every fix of ``cause`` once and list what breaks the contract."""
    cause = get_cause(cause)
    broken = reproduce(cause, framework, device, seed)
    fixes = {fix.id: reproduce(cause, framework, device, seed, fix=fix.id) for fix in cause.fixes}
    problems = []
    if broken.finite:
        problems.append(f"broken setting stayed finite for {broken.steps} steps")
    for fix in cause.fixes:
        run = fixes[fix.id]
        if fix.still_nonfinite:
            if run.finite:
                problems.append(f"wrong fix {fix.id!r} should still go non-finite but stayed finite: {run.summary()}")
        elif not run.finite:
            problems.append(f"fix {fix.id!r} was not finite: {run.summary()}")
        elif fix.hides_problem and not fix.learns_anyway and run.learned:
            problems.append(f"fix {fix.id!r} hides the problem yet learned: {run.summary()}")
        elif (not fix.hides_problem or fix.learns_anyway) and not run.learned:
            problems.append(f"fix {fix.id!r} did not learn: {run.summary()}")
    return ContractRow(cause.id, broken.framework, broken.device, seed, broken, fixes, problems)


def verify(causes: Iterable[str] | None = None, frameworks: Iterable[str] | None = None,
           seeds: int | Iterable[int] = 3, device: str = "auto") -> list[ContractRow]:
    """Check the reproduction contract for each cause × framework × seed; ``seeds=N`` means seeds 0..N-1."""
    selected = [get_cause(cause) for cause in causes] if causes else list_causes()
    wanted = [get_framework(framework) for framework in frameworks] if frameworks else list_frameworks()
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise NanlabError("seeds must name at least one seed (an integer N >= 1 means seeds 0..N-1)")
    for seed in seed_list:
        check_seed(seed)
    return [check_contract(cause, framework, seed, device)
            for cause in selected
            for framework in wanted if framework.name in cause.frameworks
            for seed in seed_list]
