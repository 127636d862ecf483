"""The reproduction contract (DESIGN.md) for every cause in both frameworks over three seeds, on this machine's
device: the broken setting goes non-finite (or the device raises the documented error), every fix stays finite
and learns, and a fix that only hides the problem stays finite without learning."""
import pytest

import nanlab

CASES = [(cause.id, framework) for cause in nanlab.list_causes() for framework in cause.frameworks]


@pytest.mark.parametrize("cause, framework", CASES)
def test_reproduction_contract_over_three_seeds(cause, framework):
    rows = nanlab.verify(causes=[cause], frameworks=[framework], seeds=3)
    problems = [f"seed {row.seed}: {problem}" for row in rows for problem in row.problems]
    assert len(rows) == 3 and not problems, "\n".join(problems)
