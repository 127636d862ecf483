"""The command line: ``nanlab list | run | verify | doctor``.

Bad input (unknown cause, framework, device or fix; CUDA asked for but absent) prints one line naming what is
valid and exits with status 2. ``verify`` exits 1 when the reproduction contract fails.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

from nanlab.devices import DEVICES
from nanlab.errors import NanlabError
from nanlab.frameworks import framework_names
from nanlab.registry import get_cause, list_causes
from nanlab.reproduce import ContractRow, reproduce, verify
from nanlab.run import Run

USAGE_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nanlab", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="{list,run,verify,doctor}")

    commands.add_parser("list", help="list the causes in the catalogue")

    run = commands.add_parser("run", help="reproduce one cause: the broken setting, or a fix")
    run.add_argument("cause", help="cause id, e.g. high-learning-rate (see `nanlab list`)")
    run.add_argument("--framework", default="torch", help=f"one of: {', '.join(framework_names())} (default: torch)")
    run.add_argument("--device", default="auto", help=f"one of: {', '.join(DEVICES)} (default: auto)")
    run.add_argument("--seed", type=int, default=0)
    which = run.add_mutually_exclusive_group()
    which.add_argument("--fix", help="run this fix instead of the broken setting")
    which.add_argument("--all-fixes", action="store_true", help="run the broken setting and every fix")
    run.add_argument("--steps", type=int, help="step budget (default: the cause's own)")
    run.add_argument("--plot", type=pathlib.Path, metavar="PATH", help="save a figure of the run(s) here")
    run.add_argument("--json", action="store_true", help="print the run(s) as JSON")

    check = commands.add_parser("verify", help="check the reproduction contract and print a table")
    check.add_argument("--cause", action="append", help="cause id (repeatable; default: all)")
    check.add_argument("--framework", action="append", help=f"one of: {', '.join(framework_names())} (repeatable)")
    check.add_argument("--seeds", type=int, default=3, help="check seeds 0..N-1 (default: 3)")
    check.add_argument("--device", default="auto", help=f"one of: {', '.join(DEVICES)} (default: auto)")
    check.add_argument("--json", type=pathlib.Path, metavar="PATH", help="also write the rows as JSON here")
    check.add_argument("--plots", type=pathlib.Path, metavar="DIR",
                       help="save one broken-vs-fixes figure per cause and framework (first seed) in DIR")
    doctor = commands.add_parser("doctor", help="check this machine: versions, devices, CUDA, the notebooks' kernel "
                                                "(exit 1 when a problem is found)")
    doctor.add_argument("--smoke", action="store_true",
                        help="instead, run the end-to-end check (about a minute): a cause reproduced in each installed "
                             "framework, the watch naming it, a fix, a figure saved to a temporary file")
    return parser


def _list() -> int:
    causes = list_causes()
    width = max(len(cause.id) for cause in causes)
    for cause in causes:
        print(f"{cause.id:{width}}  {cause.title}")
        fixes = [fix.id for fix in cause.fixes if not fix.hides_problem]
        wrong = [fix.id for fix in cause.fixes if fix.hides_problem]
        print(f"{'':{width}}  fixes: {', '.join(fixes)}" + (f"; wrong fixes: {', '.join(wrong)}" if wrong else "")
              + f"; frameworks: {', '.join(cause.frameworks)}")
    return 0


def _save_figure(runs: list[Run], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from nanlab.plot import plot_comparison

    path.parent.mkdir(parents=True, exist_ok=True)
    figure = plot_comparison(runs)
    figure.savefig(path, dpi=100)


def _run(args: argparse.Namespace) -> int:
    cause = get_cause(args.cause)
    fixes = [None, *cause.fix_ids] if args.all_fixes else [args.fix]
    runs = [reproduce(cause, args.framework, args.device, args.seed, fix=fix, steps=args.steps) for fix in fixes]
    if args.plot:
        _save_figure(runs, args.plot)
    if args.json:
        records = [run.to_dict() for run in runs]
        print(json.dumps(records if args.all_fixes else records[0], indent=2))
    else:
        for run in runs:
            print(run.summary())
    return 0


def _outcome(run: Run) -> str:
    if run.error:
        return f"raised {run.error}"
    if run.first_nonfinite_step is not None:
        return f"non-finite at step {run.first_nonfinite_step}"
    return f"finite, {'learned' if run.learned else 'did not learn'} ({run.score:.2f})"


def format_table(rows: list[ContractRow]) -> str:
    """The verify table: one line per cause x framework x seed, the broken outcome and each fix's."""
    header = ("cause", "framework", "device", "seed", "broken", "fixes", "contract")
    lines = [(row.cause, row.framework, row.device, str(row.seed), _outcome(row.broken),
              "; ".join(f"{fix_id}: {_outcome(run)}" for fix_id, run in row.fixes.items()),
              "PASS" if row.passed else "FAIL") for row in rows]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header) - 2)]
    def fmt(line):
        return "  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + f"  {line[-1]:8}  {line[-2]}"
    return "\n".join([fmt(header), *map(fmt, lines)])


def _verify(args: argparse.Namespace) -> int:
    rows = verify(args.cause, args.framework, args.seeds, args.device)
    print(format_table(rows))
    failed = [row for row in rows if not row.passed]
    for row in failed:
        for problem in row.problems:
            print(f"FAIL {row.cause} {row.framework} seed {row.seed}: {problem}")
    print(f"{len(rows) - len(failed)} passed, {len(failed)} failed")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([row.to_dict() for row in rows], indent=2))
    if args.plots:
        first_seed = rows[0].seed if rows else None
        for row in rows:
            if row.seed == first_seed:
                _save_figure([row.broken, *row.fixes.values()], args.plots / f"{row.cause}-{row.framework}.png")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            return _list()
        if args.command == "run":
            return _run(args)
        if args.command == "doctor":
            from nanlab import doctor

            return doctor.smoke() if args.smoke else doctor.run()
        return _verify(args)
    except NanlabError as error:
        print(f"nanlab: error: {error}", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
