"""The causes' rules read only the shared evidence vocabulary: no framework's op spelling, no dict-shaped evidence.

A rule written against the vocabulary (``OpFamily``, ``InputStats``, ``OptimizerFacts``, ``Phase``, the dtype limits)
holds for every framework, including one added later; a rule that names ``"realdiv"`` or reads ``facts["epsilon"]``
holds for one framework's spelling only. These tests read every ``rule.py`` (as source, with ``ast``) and every
hand-built report in the tests, so that it stays so.
"""
import ast
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RULES = sorted((ROOT / "nanlab" / "causes").glob("*/rule.py"))
TESTS = sorted((ROOT / "tests").glob("test_*.py"))

# Native op spellings the rules used before the vocabulary (torch function names and TensorFlow op types,
# lower-cased): kept here so that the test bites even where a framework's name table is not importable.
KNOWN_NATIVE_SPELLINGS = {
    "realdiv", "sqrtgrad", "linalg_vector_norm", "euclideannorm", "logsoftmax", "log_softmax", "true_divide",
    "truediv", "xlogy", "log1p", "rsqrt", "scaled_dot_product_attention", "multi_head_attention_forward",
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "bce", "divnonan", "floordiv", "cosine_similarity",
    "logsigmoid", "log_sigmoid", "softplus", "log2", "log10", "reciprocal", "normalize", "div", "divide", "sqrt",
    "pow", "exp", "log", "softmax", "norm", "std", "var",
}
# Strings a rule compares ``report.value`` with: the kind of non-finite value, not an op.
VALUE_KINDS = {"nan", "inf", "-inf"}
# Fields whose native spelling a rule must not match on (reading them to print in a reason is fine).
NATIVE_NAME_FIELDS = {"op", "op_name"}


def native_spellings() -> set[str]:
    """Every framework's native op names (its ``names.OP_FAMILIES`` keys) plus the spellings listed above."""
    spellings = set(KNOWN_NATIVE_SPELLINGS)
    from nanlab.frameworks import list_frameworks

    for framework in list_frameworks():
        try:
            names = importlib.import_module(f"{framework.package}.names")
        except ModuleNotFoundError as missing:  # the framework (or its name table) is not installed here
            if missing.name not in (f"{framework.package}.names", *framework.root_modules):
                raise
            continue
        spellings |= {name.strip("_").lower() for name in names.OP_FAMILIES}
    return spellings - VALUE_KINDS


def _tree(path: pathlib.Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _docstrings(tree: ast.Module) -> set[int]:
    """ids of the module's, classes' and functions' docstring nodes (prose, not matching)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _reads_native_name(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr in NATIVE_NAME_FIELDS


def _where(path: pathlib.Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{node.lineno}"


@pytest.mark.parametrize("path", RULES, ids=lambda path: path.parent.name)
def test_no_rule_spells_a_frameworks_op_name(path):
    tree = _tree(path)
    spellings, docstrings = native_spellings(), _docstrings(tree)
    offenders = [f"{_where(path, node)}: {node.value!r}" for node in ast.walk(tree)
                 if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                 and node.value.strip("_").lower() in spellings]
    assert not offenders, f"match on report.op_family (an OpFamily), not native op names: {offenders}"


@pytest.mark.parametrize("path", RULES, ids=lambda path: path.parent.name)
def test_no_rule_matches_on_the_native_op_name(path):
    """``report.op`` is the framework's own name: a rule prints it in its reason, never compares or parses it."""
    offenders = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            offenders += [_where(path, node) for side in sides for inner in ast.walk(side) if _reads_native_name(inner)]
        elif isinstance(node, ast.Attribute) and _reads_native_name(node.value):  # report.op.lower(), .startswith
            offenders.append(_where(path, node))
    assert not offenders, f"rules match on report.op_family, not on report.op / report.op_name: {offenders}"


@pytest.mark.parametrize("path", RULES, ids=lambda path: path.parent.name)
def test_no_rule_reads_evidence_as_a_dict(path):
    """Optimizer facts and input statistics are records (``OptimizerFacts``, ``InputStats``): one spelling of each
    field for every framework, read as attributes. ``x["eps"]`` or ``x.get("epsilon")`` is a framework's dialect."""
    offenders = []
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and isinstance(node.slice.value,
                                                                                                  str):
            offenders.append(f"{_where(path, node)}: [{node.slice.value!r}]")
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) \
                and node.value.attr in ("optimizer", "op_inputs") and not isinstance(node.slice, ast.Slice):
            offenders.append(f"{_where(path, node)}: {node.value.attr}[...]")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            offenders.append(f"{_where(path, node)}: .get(...)")
    assert not offenders, f"read OptimizerFacts / InputStats attributes, not dict keys: {offenders}"


@pytest.mark.parametrize("path", RULES, ids=lambda path: path.parent.name)
def test_no_rule_keeps_its_own_dtype_limits(path):
    """Dtype limits come from the vocabulary (``dtype_max``, ``DTYPE_MAX``, ``HALF_PRECISION``) or the report."""
    limits = {65504.0, 1e5, 3.4028234663852886e38, 57344.0, 448.0}
    offenders = [f"{_where(path, node)}: {node.value!r}" for node in ast.walk(_tree(path))
                 if isinstance(node, ast.Constant) and isinstance(node.value, float) and node.value in limits]
    assert not offenders, offenders


def _hand_built_reports(tree: ast.Module):
    """The keyword sets of ``NonFiniteReport(...)`` calls and of ``dict(phase=..., ...)`` field sets that a
    parametrised test unpacks into one."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "id", getattr(node.func, "attr", None))
        keywords = {keyword.arg: keyword.value for keyword in node.keywords if keyword.arg}
        if name == "NonFiniteReport" or (name == "dict" and "phase" in keywords):
            yield node, keywords


def _constants(tree: ast.Module) -> dict[str, ast.AST]:
    """Module-level ``NAME = value`` assignments (a shared optimizer-facts constant)."""
    return {target.id: node.value for node in tree.body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)}


@pytest.mark.parametrize("path", TESTS, ids=lambda path: path.name)
def test_hand_built_reports_speak_the_vocabulary(path):
    """A synthetic rule test builds the report a watch would: ``op_family`` beside ``op``, ``InputStats`` inputs and
    ``OptimizerFacts``; a dict there would test a dialect no watch produces any more."""
    tree = _tree(path)
    constants, offenders = _constants(tree), []
    for call, keywords in _hand_built_reports(tree):
        if "op" in keywords and "op_family" not in keywords:
            offenders.append(f"{_where(path, call)}: op without op_family")
        inputs = keywords.get("op_inputs")
        if isinstance(inputs, (ast.List, ast.Tuple)) and any(isinstance(item, ast.Dict) for item in inputs.elts):
            offenders.append(f"{_where(path, call)}: op_inputs as dicts")
        optimizer = keywords.get("optimizer")
        optimizer = constants.get(optimizer.id, optimizer) if isinstance(optimizer, ast.Name) else optimizer
        if isinstance(optimizer, ast.Dict):
            offenders.append(f"{_where(path, call)}: optimizer as a dict")
    assert not offenders, offenders


def test_the_checks_bite():
    """The checks above find a rule written in a framework's dialect."""
    source = ("def diagnose(report):\n"
              "    facts = report.optimizer or {}\n"
              "    if report.op_name in {'realdiv', 'div'} and facts.get('epsilon') and report.op.lower() == 'x':\n"
              "        return report.op_inputs[0]['max_abs']\n")
    tree = ast.parse(source)
    strings = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert {"realdiv", "div"} <= strings & native_spellings()
    compares = [node for node in ast.walk(tree) if isinstance(node, ast.Compare)]
    assert any(_reads_native_name(inner) for node in compares for inner in ast.walk(node))
    assert any(isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "get" for node in ast.walk(tree))
    assert any(isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) for node in ast.walk(tree))
