"""docs/reproduction-cpu.md is the regenerated record of the whole catalogue, not a hand-kept list."""
import pathlib
import re

import nanlab

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_cpu_table_has_one_passing_row_per_cause_and_framework_over_ten_seeds():
    text = (ROOT / "docs" / "reproduction-cpu.md").read_text()
    rows = {(cause, framework): passed for cause, framework, passed in
            re.findall(r"^\| ([a-z0-9-]+) \| (\w+) \| (\d+/\d+) \|", text, re.M)}
    expected = {(cause.id, framework) for cause in nanlab.list_causes() for framework in cause.frameworks}
    assert set(rows) == expected, "regenerate docs/reproduction-cpu.md with tools/reproduction_table.py"
    assert set(rows.values()) == {"10/10"}
    for cause in nanlab.list_causes():
        for fix in cause.fixes:
            assert f"{fix.id}:" in text, f"{cause.id}: fix {fix.id} is missing from the table"
