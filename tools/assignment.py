"""Graded exercises with nbgrader: mark the exercise cells, build the release and the answer key, grade submissions.

Usage (from the repository root; `make assignment`, `make autograde`):

    python -m tools.assignment mark [--check] NOTEBOOK ...     nbgrader metadata on every exercise (idempotent)
    python -m tools.assignment release [--course DIR] [--answer-key DIR] NOTEBOOK ...
    python -m tools.assignment autograde [--course DIR] SUBMISSIONS

**The convention in a notebook** (tests/test_assignment.py checks every notebook keeps it):

- An *answer cell* is a code cell with the solution between ``### BEGIN SOLUTION`` and ``### END SOLUTION``
  (several regions allowed); nbgrader metadata ``solution: true`` ("autograded answer"). Consecutive answer cells
  belong to one exercise (a prediction, then the run).
- The code cells right after it, up to the next markdown cell, are its *tests*: ``grade: true, locked: true`` with
  ``points`` ("autograder tests"). The visible part is the check a student runs; checks that would give the answer
  away, and extra cases that catch a hard-coded answer, go between ``### BEGIN HIDDEN TESTS`` and
  ``### END HIDDEN TESTS``: nbgrader removes them from the release and puts them back when it grades.
- A markdown cell that explains an exercise's answer (a predict-first question's "why") keeps the explanation
  between ``<!-- ### BEGIN HIDDEN TESTS -->`` and ``<!-- ### END HIDDEN TESTS -->`` (HTML comments: invisible
  where the notebook is rendered) and is ``locked``: the release shows none of it, and since nbgrader restores a
  locked cell's source when it grades, the explanation comes back in the student's feedback. nbgrader expects
  hidden regions in grade cells only, so the course's config sets ``ClearHiddenTests.enforce_metadata = False``.
- Exercises are numbered from 1 in each notebook; grade ids are ``ex<N>-answer``, ``ex<N>-tests``, ``ex<N>-why``.
  Points default to 1 per tests cell; ``mark`` keeps points and grade ids already set.

**The course** (``build/course`` by default) is an nbgrader course directory: one assignment per notebook folder
(``intro`` for the notebooks at the top of notebooks/, ``pytorch``, ``tensorflow``), the notebooks and the helper
scripts beside them in ``source/<assignment>/``, ``release/<assignment>/`` written by ``nbgrader
generate_assignment``, and the gradebook. Files the notebooks read by a relative path into the repository
(``../../benchmarks/RESULTS.md``) are copied to where that path lands from each folder nbgrader runs them in.
``release`` also writes the answer key (``build/answer-key/<assignment>/``): the source notebooks as committed,
executed with their solutions, hidden tests and explanations, and an HTML page of each.

**Grading**: ``autograde SUBMISSIONS`` takes ``SUBMISSIONS/<student>/...`` in nbgrader's layout
(``<student>/<assignment>/<notebook>.ipynb``) or the handout's (``<student>/notebooks/pytorch/….ipynb``, a
student's whole folder), runs ``nbgrader autograde`` (it executes each submitted notebook, so run it where
students' code may run), writes feedback (``nbgrader generate_feedback``: HTML with the hidden tests and the
explanations) and prints the score of every submitted notebook, also written to ``<course>/scores.csv``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import pathlib
import re
import shutil
import subprocess
import sys

import nbformat

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = ROOT / "notebooks"
COURSE = ROOT / "build" / "course"
ANSWER_KEY = ROOT / "build" / "answer-key"
COURSE_ID = "nanlab"
INTRO = "intro"  # the assignment of the notebooks at the top of notebooks/ (00-start-here)
DEFAULT_POINTS = 1
SCHEMA_VERSION = 3
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"  # nbgrader's own stub, said here for the tests

SOLUTION_LINE = re.compile(r"^[ \t]*### BEGIN SOLUTION", re.MULTILINE)
HIDDEN_LINE = re.compile(r"^[ \t]*(?:<!--[ \t]*)?### BEGIN HIDDEN TESTS", re.MULTILINE)
# nbgrader finds its delimiters anywhere in a line: prose that quotes one would open a region
DELIMITERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS", "BEGIN MARK SCHEME",
              "END MARK SCHEME")
WORD_JOINER = "\u2060"  # invisible; "BEGIN\u2060SOLUTION" reads the same and is no delimiter
# a string literal in a code cell that starts with ../ (a file the notebook reads by a repository-relative path)
RELATIVE_PATH = re.compile(r"""["'](\.\./[^"'\s{}]+)["']""")

CONFIG = '''\
# Written by tools/assignment.py (make assignment); edits are overwritten.
c = get_config()
c.CourseDirectory.course_id = "{course_id}"
c.ClearSolutions.code_stub = {{"python": {stub!r}}}
# an exercise's explanation is a hidden region in a locked markdown cell (not a grade cell): see tools/assignment.py
c.ClearHiddenTests.enforce_metadata = False
c.Execute.timeout = 900  # seconds per cell: a cell that trains a model runs for a minute on a slow CPU
'''


# --- the exercises of a notebook ---------------------------------------------------------------------------------

def has_solution(cell) -> bool:
    """True for a code cell with a line that opens a solution region (a marker quoted in prose does not count)."""
    return cell.cell_type == "code" and bool(SOLUTION_LINE.search(cell.source))


def has_hidden(cell) -> bool:
    """True for a cell with a line that opens a hidden region (``### BEGIN HIDDEN TESTS``, in markdown inside an
    HTML comment)."""
    return bool(HIDDEN_LINE.search(cell.source))


@dataclasses.dataclass
class Exercise:
    number: int
    answers: list[int] = dataclasses.field(default_factory=list)
    tests: list[int] = dataclasses.field(default_factory=list)
    why: list[int] = dataclasses.field(default_factory=list)


def exercises(notebook) -> list[Exercise]:
    """The exercises of ``notebook`` by cell index, in order (see the module's docstring for the convention)."""
    found: list[Exercise] = []
    previous = None  # "answer", "tests" or None
    for index, cell in enumerate(notebook.cells):
        if has_solution(cell):
            if previous != "answer":
                found.append(Exercise(len(found) + 1))
            found[-1].answers.append(index)
            previous = "answer"
        elif cell.cell_type == "code" and previous in ("answer", "tests"):
            found[-1].tests.append(index)
            previous = "tests"
        else:
            if cell.cell_type == "markdown" and has_hidden(cell):
                if not found:
                    raise ValueError(f"cell {index}: a hidden explanation before any exercise")
                found[-1].why.append(index)
            previous = None
    return found


def _grade_id(kind: str, number: int, position: int) -> str:
    return f"ex{number}-{kind}" + (f"-{position + 1}" if position else "")


def _metadata(cell, *, grade: bool, solution: bool, locked: bool, grade_id: str, points: bool = False) -> None:
    old = cell.metadata.get("nbgrader", {})
    new = {"grade": grade, "grade_id": old.get("grade_id", grade_id), "locked": locked,
           "schema_version": SCHEMA_VERSION, "solution": solution}
    if points:
        new["points"] = old.get("points", DEFAULT_POINTS)
    cell.metadata["nbgrader"] = new


def mark(notebook):
    """``notebook`` with nbgrader metadata on every exercise cell: answers, tests (with points) and hidden
    explanations. Keeps grade ids and points already set; changes nothing else (sources and outputs untouched)."""
    for exercise in exercises(notebook):
        for position, index in enumerate(exercise.answers):
            _metadata(notebook.cells[index], grade=False, solution=True, locked=False,
                      grade_id=_grade_id("answer", exercise.number, position))
        for position, index in enumerate(exercise.tests):
            _metadata(notebook.cells[index], grade=True, solution=False, locked=True, points=True,
                      grade_id=_grade_id("tests", exercise.number, position))
        for position, index in enumerate(exercise.why):
            _metadata(notebook.cells[index], grade=False, solution=False, locked=True,
                      grade_id=_grade_id("why", exercise.number, position))
    return notebook


def problems(notebook) -> list[str]:
    """What keeps ``notebook`` from being a graded assignment as committed (empty when it is one)."""
    found = []
    marked = mark(nbformat.from_dict(notebook))
    in_exercises = {index for exercise in exercises(notebook)
                    for index in exercise.answers + exercise.tests + exercise.why}
    for index, (cell, expected) in enumerate(zip(notebook.cells, marked.cells)):
        if cell.metadata.get("nbgrader") != expected.metadata.get("nbgrader"):
            found.append(f"cell {index}: nbgrader metadata missing or different from `mark`'s")
        if "nbgrader" in cell.metadata and index not in in_exercises:
            found.append(f"cell {index}: nbgrader metadata on a cell that is no exercise's answer, tests or why")
        if cell.cell_type == "markdown" and "BEGIN SOLUTION" in cell.source and "nbgrader" in cell.metadata:
            found.append(f"cell {index}: a markdown solution needs manual grading; use a code answer")
    for exercise in exercises(notebook):
        if not any(notebook.cells[index].metadata.get("nbgrader", {}).get("points", 0) > 0
                   for index in exercise.tests):
            found.append(f"exercise {exercise.number} (cell {exercise.answers[0]}): no tests cell with points "
                         "after its answer (a code cell before the next markdown cell)")
    return found


def quoted_delimiters(notebook) -> list[int]:
    """Cells outside the exercises that quote an nbgrader delimiter (prose about the markers): nbgrader would read
    the quote as the start of a region. The course copies make them inert (``neutralise_quoted_delimiters``)."""
    return [index for index, cell in enumerate(notebook.cells)
            if "nbgrader" not in cell.metadata and any(word in cell.source for word in DELIMITERS)]


def neutralise_quoted_delimiters(notebook) -> list[int]:
    """Make delimiters quoted in cells without nbgrader metadata inert (a word joiner inside them); the indices of
    the cells changed. Only for copies: nbgrader would read such a quote as the start of a region."""
    changed = []
    for index, cell in enumerate(notebook.cells):
        if "nbgrader" in cell.metadata:
            continue
        source = cell.source
        for word in DELIMITERS:
            source = source.replace(word, word.replace(" ", WORD_JOINER, 1))
        if source != cell.source:
            cell.source = source
            changed.append(index)
    return changed


# --- where notebooks go --------------------------------------------------------------------------------------------

def assignment_of(notebook: pathlib.Path) -> str:
    """The nbgrader assignment of a repository notebook: its folder under notebooks/, or ``intro`` at the top."""
    relative = notebook.resolve().relative_to(NOTEBOOKS_DIR)
    return relative.parts[0] if len(relative.parts) > 1 else INTRO


def handout_folder(assignment: str) -> pathlib.PurePosixPath:
    """Where an assignment's notebooks sit in the handout: the repository's layout, ``notebooks/<folder>``."""
    return pathlib.PurePosixPath("notebooks") if assignment == INTRO else pathlib.PurePosixPath("notebooks",
                                                                                                assignment)


def helper_files(notebook: pathlib.Path) -> list[pathlib.Path]:
    """The scripts beside a notebook that it runs (pytorch/90 runs ddp_hunt.py)."""
    return sorted(notebook.parent.glob("*.py"))


def files_read(notebook: pathlib.Path) -> list[tuple[str, pathlib.Path]]:
    """``(relative path as written, repository file)`` for each existing repository file a code cell of
    ``notebook`` names by a ``../`` path (``"../../benchmarks/RESULTS.md"``)."""
    found = {}
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        for written in RELATIVE_PATH.findall(cell.source):
            target = (notebook.resolve().parent / written).resolve()
            if target.is_file() and target.is_relative_to(ROOT):
                found[written] = target
    return sorted(found.items())


def place_files_read(notebook: pathlib.Path, placed_at: pathlib.Path, root: pathlib.Path) -> list[pathlib.Path]:
    """Copy the files ``notebook`` (a repository path) reads to where its relative paths land when the notebook
    sits in folder ``placed_at``; each must land inside ``root``. The copies written."""
    written = []
    for relative, source in files_read(notebook):
        target = pathlib.Path(os.path.normpath(placed_at / relative))
        if not target.is_relative_to(root):
            raise ValueError(f"{notebook.name} reads {relative}, which would land outside {root} at {target}")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
        written.append(target)
    return written


# --- the course ----------------------------------------------------------------------------------------------------

def nbgrader(course: pathlib.Path, *arguments: str) -> subprocess.CompletedProcess:
    """Run ``nbgrader ARGUMENTS`` in ``course``, with this Python's scripts first on PATH (nbgrader runs alembic)."""
    environment = dict(os.environ)
    environment["PATH"] = os.pathsep.join([str(pathlib.Path(sys.executable).parent), environment.get("PATH", "")])
    result = subprocess.run([sys.executable, "-m", "nbgrader", *arguments], cwd=course, env=environment,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(arguments)} failed ({result.returncode}):\n{result.stdout}\n"
                           f"{result.stderr}")
    return result


def _shown(path: pathlib.Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def write_source(notebooks: list[pathlib.Path], course: pathlib.Path) -> dict[str, list[pathlib.Path]]:
    """The course directory's config and ``source/<assignment>/``: the notebooks (metadata added where a notebook
    lacks it, quoted delimiters made inert), their helper scripts and the files they read. The notebooks by
    assignment."""
    course.mkdir(parents=True, exist_ok=True)
    (course / "nbgrader_config.py").write_text(CONFIG.format(course_id=COURSE_ID, stub=CODE_STUB))
    by_assignment: dict[str, list[pathlib.Path]] = {}
    for notebook in notebooks:
        by_assignment.setdefault(assignment_of(notebook), []).append(notebook)
    for assignment, members in by_assignment.items():
        folder = course / "source" / assignment
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        for notebook in members:
            copy = nbformat.read(notebook, as_version=4)
            missing = problems(copy)
            mark(copy)
            changed = neutralise_quoted_delimiters(copy)
            if missing:
                print(f"warning: {_shown(notebook)}: {len(missing)} problems with its nbgrader metadata ({missing[0]} "
                      f"…); marked in the course copy. To commit the metadata: python -m tools.assignment mark "
                      f"{_shown(notebook)}", file=sys.stderr)
            if changed:
                print(f"note: {_shown(notebook)}: cells {changed} quote an nbgrader delimiter in prose; made inert "
                      "in the course copy", file=sys.stderr)
            nbformat.write(copy, folder / notebook.name)
            for helper in helper_files(notebook):
                shutil.copy2(helper, folder / helper.name)
            place_files_read(notebook, folder, course)
    return by_assignment


def release(notebooks: list[pathlib.Path], course: pathlib.Path = COURSE,
            answer_key: pathlib.Path | None = ANSWER_KEY) -> dict[str, list[pathlib.Path]]:
    """``nbgrader generate_assignment`` for each assignment of ``notebooks``; then the answer key. The released
    notebooks by assignment (``<course>/release/<assignment>/<name>.ipynb``)."""
    by_assignment = write_source(notebooks, course)
    released = {}
    for assignment, members in by_assignment.items():
        nbgrader(course, "generate_assignment", assignment, "--force")
        released[assignment] = [course / "release" / assignment / notebook.name for notebook in members]
        for notebook in members:  # the release's files that notebooks read, as from source/
            place_files_read(notebook, course / "release" / assignment, course)
    if answer_key is not None:
        write_answer_key(by_assignment, answer_key)
    return released


def write_answer_key(by_assignment: dict[str, list[pathlib.Path]], out: pathlib.Path) -> list[pathlib.Path]:
    """The answer key: each source notebook as committed (executed, with its solutions, hidden tests and
    explanations) and an HTML page of it, in ``<out>/<assignment>/``."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter()
    written = []
    for assignment, members in by_assignment.items():
        folder = out / assignment
        folder.mkdir(parents=True, exist_ok=True)
        for notebook in members:
            shutil.copy2(notebook, folder / notebook.name)
            body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4),
                                                  resources={"metadata": {"name": f"{notebook.stem} (answer key)"}})
            page = folder / f"{notebook.stem}.html"
            page.write_text(body, encoding="utf-8")
            written += [folder / notebook.name, page]
    return written


# --- grading -------------------------------------------------------------------------------------------------------

def released_assignments(course: pathlib.Path) -> dict[str, set[str]]:
    """The notebook names (stems) of each released assignment."""
    return {folder.name: {path.stem for path in folder.glob("*.ipynb")}
            for folder in sorted((course / "release").glob("*")) if folder.is_dir()}


def collect_submissions(submissions: pathlib.Path, course: pathlib.Path) -> dict[str, dict[str, list[str]]]:
    """Copy ``submissions/<student>/…`` into ``<course>/submitted/<student>/<assignment>/``, each notebook filed
    under its assignment by its folder (``pytorch``, ``tensorflow``, ``intro`` or the handout's ``notebooks``) or,
    where the folder says nothing, by its name when only one assignment has it. ``{student: {assignment:
    [notebook stems]}}``."""
    assignments = released_assignments(course)
    if not assignments:
        raise SystemExit(f"no release in {course}: run `make assignment` first")
    collected: dict[str, dict[str, list[str]]] = {}
    for student in sorted(path for path in submissions.iterdir() if path.is_dir()):
        for notebook in sorted(student.rglob("*.ipynb")):
            if ".ipynb_checkpoints" in notebook.parts:
                continue
            folder = notebook.parent.name
            owners = [name for name, stems in assignments.items() if notebook.stem in stems]
            if folder in assignments and folder in owners:
                assignment = folder
            elif folder == "notebooks" and INTRO in owners:
                assignment = INTRO
            elif len(owners) == 1:
                assignment = owners[0]
            else:
                why = ("no released notebook has this name" if not owners
                       else "put it in a folder named after its assignment: " + ", ".join(owners))
                print(f"skipped {notebook}: {why}", file=sys.stderr)
                continue
            target = course / "submitted" / student.name / assignment / notebook.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(notebook, target)
            collected.setdefault(student.name, {}).setdefault(assignment, []).append(notebook.stem)
    return {student: {name: sorted(stems) for name, stems in sorted(by_assignment.items())}
            for student, by_assignment in collected.items()}


@dataclasses.dataclass
class Score:
    student: str
    notebook: str  # <assignment>/<name>
    score: float
    max_score: float


def autograde(submissions: pathlib.Path, course: pathlib.Path = COURSE, notebooks: list[pathlib.Path] | None = None,
              feedback: bool = True) -> list[Score]:
    """Grade every notebook in ``submissions`` (see ``collect_submissions``) with ``nbgrader autograde``; the score
    of each, in order. ``notebooks`` (repository paths) say which files the graded notebooks read; default: every
    notebook under notebooks/."""
    from nbgrader.api import Gradebook

    course = course.resolve()
    if (course / "submitted").exists():
        shutil.rmtree(course / "submitted")
    collected = collect_submissions(submissions, course)
    if not collected:
        raise SystemExit(f"no notebooks under {submissions}/<student>/")
    repository = {(assignment_of(notebook), notebook.stem): notebook
                  for notebook in (notebooks or sorted(NOTEBOOKS_DIR.rglob("*.ipynb")))}
    for student, by_assignment in collected.items():
        for assignment, stems in by_assignment.items():
            for stem in stems:  # the files a notebook reads, where its relative paths land in autograded/
                if (assignment, stem) in repository:
                    place_files_read(repository[assignment, stem], course / "autograded" / student / assignment,
                                     course)
    scores = []
    with_submissions = sorted({assignment for by_assignment in collected.values() for assignment in by_assignment})
    for assignment in with_submissions:  # every student under submitted/ (collected afresh above)
        nbgrader(course, "autograde", assignment, "--force")
        if feedback:
            nbgrader(course, "generate_feedback", assignment, "--force")
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", COURSE_ID) as gradebook:
        for student, by_assignment in sorted(collected.items()):
            for assignment, stems in sorted(by_assignment.items()):
                for stem in stems:
                    graded = gradebook.find_submission_notebook(stem, assignment, student)
                    scores.append(Score(student, f"{assignment}/{stem}", graded.score, graded.max_score))
    return scores


def score_table(scores: list[Score]) -> str:
    """A plain-text table: one row per submitted notebook, then each student's total."""
    rows = [("student", "notebook", "score", "max")]
    for student in dict.fromkeys(score.student for score in scores):
        own = [score for score in scores if score.student == student]
        rows += [(student, score.notebook, f"{score.score:g}", f"{score.max_score:g}") for score in own]
        rows.append((student, "total", f"{sum(s.score for s in own):g}", f"{sum(s.max_score for s in own):g}"))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return "\n".join(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}"
                     for row in rows)


def write_scores_csv(scores: list[Score], path: pathlib.Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "notebook", "score", "max_score"])
        writer.writerows(dataclasses.astuple(score) for score in scores)


# --- command line --------------------------------------------------------------------------------------------------

def _default_notebooks(paths: list[pathlib.Path]) -> list[pathlib.Path]:
    return [path.resolve() for path in paths] or sorted(NOTEBOOKS_DIR.rglob("*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    marking = commands.add_parser("mark", help="add nbgrader metadata to every exercise (in place)")
    marking.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook needs marking")
    marking.add_argument("notebooks", nargs="*", type=pathlib.Path)
    releasing = commands.add_parser("release", help="nbgrader generate_assignment, and the answer key")
    releasing.add_argument("--course", type=pathlib.Path, default=COURSE)
    releasing.add_argument("--answer-key", type=pathlib.Path, default=ANSWER_KEY)
    releasing.add_argument("notebooks", nargs="*", type=pathlib.Path)
    grading = commands.add_parser("autograde", help="grade SUBMISSIONS/<student>/… and print the scores")
    grading.add_argument("--course", type=pathlib.Path, default=COURSE)
    grading.add_argument("--no-feedback", action="store_true")
    grading.add_argument("submissions", type=pathlib.Path)
    args = parser.parse_args(argv)

    if args.command == "mark":
        failing = 0
        for path in _default_notebooks(args.notebooks):
            notebook = nbformat.read(path, as_version=4)
            found = problems(notebook)
            if args.check:
                for problem in found:
                    print(f"{path.relative_to(ROOT)}: {problem}")
                failing += bool(found)
            elif found:
                nbformat.write(mark(notebook), path)
                remaining = problems(notebook)
                print(f"{path.relative_to(ROOT)}: marked {len(exercises(notebook))} exercises"
                      + (f"; still to fix by hand: {'; '.join(remaining)}" if remaining else ""))
        return 1 if failing else 0
    if args.command == "release":
        released = release(_default_notebooks(args.notebooks), args.course.resolve(), args.answer_key.resolve())
        for assignment, paths in released.items():
            print(f"{args.course / 'release' / assignment}: {len(paths)} notebooks")
        print(f"answer key: {args.answer_key}")
        return 0
    if not (args.course / "gradebook.db").exists():
        release(_default_notebooks([]), args.course.resolve())
    scores = autograde(args.submissions, args.course, feedback=not args.no_feedback)
    print(score_table(scores))
    write_scores_csv(scores, args.course / "scores.csv")
    print(f"\n{args.course / 'scores.csv'}" + ("" if args.no_feedback else
                                               f"; feedback (HTML) in {args.course / 'feedback'}/<student>/"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
