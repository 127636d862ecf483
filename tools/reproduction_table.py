"""Summarise ``nanlab verify --json`` rows as the Markdown reproduction table in docs/.

Usage:
    nanlab verify --seeds 10 --device cpu --json verify10.json
    python -m tools.reproduction_table verify10.json docs/reproduction-cpu.md --command "nanlab verify ..."

One line per cause and framework: how many seeds passed the contract, where the broken run went non-finite (or what
the device raised), and for each fix how many seeds learned and its lowest held-out score; a wrong fix is marked
and summarised by what it does instead (stays finite without learning, or still goes non-finite).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
from collections import defaultdict

import nanlab


def _steps(runs: list[dict]) -> str:
    steps = [run["first_nonfinite_step"] for run in runs if run["first_nonfinite_step"] is not None]
    return f"{min(steps)}-{max(steps)}" if steps else "-"


def _broken(runs: list[dict]) -> str:
    errors = sorted({run["error"] for run in runs if run["error"]})
    if errors:
        return f"raised {', '.join(errors)}"
    nonfinite = sum(run["first_nonfinite_step"] is not None for run in runs)
    return f"non-finite at step {_steps(runs)} ({nonfinite}/{len(runs)})"


def _fix(fix: nanlab.Fix, runs: list[dict]) -> str:
    seeds = len(runs)
    if fix.still_nonfinite:
        nonfinite = sum(run["first_nonfinite_step"] is not None for run in runs)
        return f"{fix.id}: non-finite {nonfinite}/{seeds} (wrong fix, steps {_steps(runs)})"
    scores = [run["score"] for run in runs if run["score"] is not None]
    lowest = f"{min(scores):.2f}" if scores else "-"
    learned = sum(run["learned"] for run in runs)
    if fix.hides_problem:
        finite = sum(run["first_nonfinite_step"] is None and run["error"] is None for run in runs)
        return f"{fix.id}: finite {finite}/{seeds}, learned {learned}/{seeds} (wrong fix), lowest {lowest}"
    return f"{fix.id}: {learned}/{seeds}, {lowest}"


def table(rows: list[dict]) -> str:
    grouped: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        grouped[(row["cause"], row["framework"])].append(row)
    lines = ["| cause | framework | seeds passed | broken | fixes: learned / seeds, lowest held-out score |",
             "|---|---|---|---|---|"]
    for cause in nanlab.list_causes():
        for framework in cause.frameworks:
            group = grouped.get((cause.id, framework))
            if not group:
                continue
            passed = sum(row["passed"] for row in group)
            fixes = "; ".join(_fix(fix, [row["fixes"][fix.id] for row in group]) for fix in cause.fixes)
            lines.append(f"| {cause.id} | {framework} | {passed}/{len(group)} | "
                         f"{_broken([row['broken'] for row in group])} | {fixes} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", type=pathlib.Path, help="the JSON file `nanlab verify --json` wrote")
    parser.add_argument("out", type=pathlib.Path, help="the Markdown file to write")
    parser.add_argument("--command", required=True, help="the verify command that made the rows (quoted in the page)")
    parser.add_argument("--duration", default="", help="how long it took, e.g. '9 min 40 s'")
    args = parser.parse_args()
    rows = json.loads(args.rows.read_text())
    from nanlab.frameworks import list_frameworks

    versions = "; ".join(framework.backend.version() for framework in list_frameworks())
    passed = sum(row["passed"] for row in rows)
    devices = ", ".join(sorted({row["device"] for row in rows}))
    duration = f", {args.duration}" if args.duration else ""
    args.out.write_text(f"""# Reproduction table ({devices})

The reproduction contract for every cause in every framework it lists, made with {versions}, Python
{platform.python_version()}, on {devices} ({passed} of {len(rows)} rows passed{duration}):

```bash
{args.command}
python -m tools.reproduction_table verify.json {args.out} --command "..."
```

A broken run passes by going non-finite within its step budget (or by the device raising the documented error); a
fix passes by staying finite and learning; a wrong fix passes by *not* curing the cause: it stays finite without
learning, or ("non-finite") still goes NaN. Regenerate this page whenever a cause or a fix changes.

{table(rows)}
""")
    print(f"wrote {args.out}: {passed}/{len(rows)} rows passed")


if __name__ == "__main__":
    main()
