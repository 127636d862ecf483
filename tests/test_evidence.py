"""nanlab.evidence: the one label check the scanner, the watches and the label recipes share."""
import numpy as np
import pytest

import nanlab
from nanlab.evidence import check_labels, find_bad_labels, inspect_labels, label_problem, symmetric_labels


def test_each_kind_of_bad_label_is_found_per_sample():
    y = np.array([0, 4, 8000, -1, 2.5, np.nan, -100, 1])
    found = inspect_labels(y, num_classes=5)
    assert (found.out_of_range, found.negative, found.non_integer, found.nonfinite) == ((2,), (3,), (4,), (5,))
    assert found.padding == (6,) and found.bad == [2, 3, 4, 5]
    assert found.phrase().startswith("labels outside 0..4 (label 8000, -1, 2.5, nan at sample 2, 3, 4, 5)")


def test_per_position_labels_flag_the_sample_once():
    y = np.array([[0, 1, -100], [1, 7, 7], [2, 2, 2]])
    found = inspect_labels(y, num_classes=3)
    assert found.out_of_range == (1,) and found.padding == (0,) and found.bad == [1]


def test_symmetric_encoding_is_told_apart_from_other_negative_labels():
    assert symmetric_labels(np.array([-1, 0, 1, 1]))
    assert symmetric_labels(np.array([-1.0, 1.0]))
    assert not symmetric_labels(np.array([0, 1, 2]))
    assert not symmetric_labels(np.array([-2, 0, 1]))
    assert not symmetric_labels(np.array([-100, 0, 1])), "padding is not a -1/+1 encoding"


def test_label_problem_judges_class_ids_only():
    assert label_problem(np.array([0, 1, 9]), 5)[1] == [2]
    assert label_problem(np.array([[0.0, 1.0], [1.0, 0.0]]), 2) is None, "one-hot targets are not class ids"
    assert label_problem(np.array([0.3, 1.7]), None) is None, "regression targets are not class ids"
    assert label_problem(np.array([0, -100, 1]), 2) is None, "padding is fine"
    assert label_problem(np.array([0, -100, 1]), 2, ignore_index=None)[1] == [1]


def test_strict_check_for_recipes_names_the_samples():
    assert find_bad_labels(np.array([0, 1, 7, -1]), 3).tolist() == [2, 3]
    with pytest.raises(nanlab.NanlabError, match=r"2 of 4 labels are not class ids in 0\.\.2: sample 2 \(label 7\)"):
        check_labels(np.array([0, 1, 7, -1]), 3)
    with pytest.raises(nanlab.NanlabError, match="1-D"):
        find_bad_labels(np.zeros((2, 2)), 3)


def test_nanlab_scan_defaults_to_the_evidence_modules_ignore_index():
    import inspect

    from nanlab.evidence import IGNORE_INDEX

    assert inspect.signature(nanlab.scan).parameters["ignore_index"].default == IGNORE_INDEX


def test_a_report_phrase_names_each_bad_value_once():
    phrase = inspect_labels(np.array([-1, -1, 0, -1, 1, -1]), num_classes=2).phrase()
    assert phrase == "labels outside 0..1 (label -1 at sample 0, 1, 3, 5)"


def test_label_problem_asks_class_id_targets_floats_only_under_a_sparse_loss():
    floats = np.array([0.0, 1.0, 9.0])
    assert label_problem(floats, 5) is None, "float targets are not class ids unless the loss is sparse categorical"
    assert label_problem(floats, 5, ignore_index=None, sparse_loss=True)[1] == [2]
    assert label_problem(np.array([True, False, True]), 2) is None, "booleans are never class ids"
    assert label_problem(np.array([[0], [7]]), 5)[1] == [1], "Keras' (n, 1) integer labels are class ids"
    smoothed = np.full((2, 3), 0.1 / 3) + np.eye(3)[[0, 2]] * 0.9
    assert label_problem(smoothed, 3, sparse_loss=False) is None
