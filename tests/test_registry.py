"""The catalogue: ids, fixes, notebooks and recipes agree with each other."""
import pathlib
import re

import pytest

import nanlab
from nanlab.frameworks import framework_names

ROOT = pathlib.Path(__file__).resolve().parents[1]
CAUSES = nanlab.list_causes()


def test_catalogue_starts_with_the_foundation_cause():
    assert CAUSES[0].id == "high-learning-rate"
    assert [cause.number for cause in CAUSES] == sorted({cause.number for cause in CAUSES})


@pytest.mark.parametrize("cause", CAUSES, ids=lambda cause: cause.id)
def test_cause_is_well_formed(cause):
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", cause.id), "cause ids are kebab-case"
    assert cause.fixes and len(set(cause.fix_ids)) == len(cause.fix_ids)
    assert any(not fix.hides_problem for fix in cause.fixes), "a cause needs at least one real fix"
    assert set(cause.frameworks) <= set(framework_names())
    assert len(cause.seeds) >= 10
    assert cause.when and cause.symptom and cause.mechanism


@pytest.mark.parametrize("cause", CAUSES, ids=lambda cause: cause.id)
def test_every_notebook_exists(cause):
    for path in cause.notebooks.values():
        assert (ROOT / path).is_file(), f"missing notebook {path}"


@pytest.mark.parametrize("framework", framework_names())
@pytest.mark.parametrize("cause", CAUSES, ids=lambda cause: cause.id)
def test_recipe_settings_match_the_fixes(cause, framework):
    recipe = cause.recipe(framework)
    assert set(recipe.SETTINGS) == {"broken", *cause.fix_ids}


def test_unknown_cause_names_the_valid_ones():
    with pytest.raises(nanlab.NanlabError, match="valid causes: high-learning-rate"):
        nanlab.get_cause("no-such-cause")


def test_unknown_fix_and_framework_name_the_valid_ones():
    with pytest.raises(nanlab.NanlabError, match="valid fixes: lower-lr"):
        nanlab.reproduce("high-learning-rate", fix="more-coffee")
    with pytest.raises(nanlab.NanlabError, match="valid frameworks: torch, tensorflow"):
        nanlab.reproduce("high-learning-rate", framework="jax")


def test_framework_aliases():
    cause = nanlab.get_cause("high-learning-rate")
    assert cause.framework("PyTorch").name == "torch"
    assert cause.framework("keras").name == "tensorflow"


def test_judge_learning_needs_finite_falling_loss_and_score():
    cause = nanlab.get_cause("high-learning-rate")
    falling = [1.4] + [1.0] * 8 + [0.1]
    assert cause.judge_learning(falling, score=0.9)
    assert not cause.judge_learning(falling, score=0.3)
    assert not cause.judge_learning([1.4] * 10, score=0.9)
    assert not cause.judge_learning(falling[:-1] + [float("nan")], score=0.9)
    assert not cause.judge_learning(falling, score=None)
