"""nanlab.scan: what it finds in arrays, tensors and streams, and the clear errors it gives on malformed input."""
import subprocess
import sys

import numpy as np
import pytest

import nanlab
from nanlab.errors import NanlabError


def clean_data(n=40, features=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, features)).astype(np.float32), rng.integers(0, classes, n)


def test_import_nanlab_imports_no_framework():
    code = ("import sys, nanlab; nanlab.watch; nanlab.scan; "
            "print(sorted({'torch', 'tensorflow', 'keras'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_clean_data_has_no_findings():
    x, y = clean_data()
    report = nanlab.scan(x, y, num_classes=3)
    assert report.clean and "nothing suspicious" in str(report)
    assert (report.num_samples, report.num_features) == (40, 6)


def test_finds_non_finite_samples_and_features():
    x, y = clean_data()
    x[3, 1], x[17, 4], x[17, 1] = np.nan, np.inf, -np.inf
    report = nanlab.scan(x, y)
    assert report.nonfinite_samples == [3, 17] and report.nonfinite_features == [1, 4]
    assert "non-finite inputs in 2 samples" in str(report)


def test_finds_labels_out_of_range_negative_and_non_integer():
    x, y = clean_data()
    y = y.astype(np.float64)
    y[5], y[9], y[30] = 8000, -1, 1.5
    report = nanlab.scan(x, y, num_classes=3)
    assert report.bad_label_samples == [5, 9, 30]
    assert {"negative labels", "labels >= num_classes (3)", "non-integer labels"} == set(report.label_problems)


def test_finds_unnormalised_pixels_zero_rows_and_huge_targets():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(20, 8, 8)).astype(np.float32)
    pixels[[4, 11]] = 0.0
    report = nanlab.scan(pixels)
    assert report.unnormalised and report.zero_rows == [4, 11]
    regression = nanlab.scan(rng.normal(size=(20, 3)), rng.normal(size=20) * 1e10)
    assert regression.huge_targets and "huge target scale" in str(regression)
    assert not nanlab.scan(rng.normal(size=(20, 3)), rng.normal(size=20)).huge_targets


def test_torch_tensors_and_dataloader_stream_with_global_indices():
    torch = pytest.importorskip("torch")
    x, y = clean_data()
    x[33, 0] = np.nan
    y[21] = 7
    tensors = nanlab.scan(torch.as_tensor(x), torch.as_tensor(y), num_classes=3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.as_tensor(x), torch.as_tensor(y)),
                                         batch_size=8)
    streamed = nanlab.scan(loader, num_classes=3, progress=False)
    for report in (tensors, streamed):
        assert report.nonfinite_samples == [33] and report.bad_label_samples == [21]


def test_tf_tensors_and_dataset_stream():
    tf = pytest.importorskip("tensorflow")
    x, y = clean_data()
    x[2, 5] = np.inf
    y[39] = -2
    tensors = nanlab.scan(tf.constant(x), tf.constant(y))
    streamed = nanlab.scan(tf.data.Dataset.from_tensor_slices((x, y)).batch(16), progress=False)
    for report in (tensors, streamed):
        assert report.nonfinite_samples == [2] and report.bad_label_samples == [39]


@pytest.mark.parametrize("x, y, message", [
    ([[1.0, 2.0], [3.0]], None, "ragged"),
    (np.array(["a", "b"]), None, "numeric"),
    (np.zeros((4, 2)), np.zeros(3), "same number of samples"),
    (np.float32(1.0), None, "sample axis"),
])
def test_malformed_input_gets_one_clear_error(x, y, message):
    with pytest.raises(NanlabError, match=message):
        nanlab.scan(x, y)


def test_bad_num_classes_is_rejected():
    with pytest.raises(NanlabError, match="num_classes"):
        nanlab.scan(np.zeros((2, 2)), np.zeros(2), num_classes=0)


def test_token_ids_for_an_embedding_are_not_unnormalised_inputs():
    rng = np.random.default_rng(2)
    token_ids = rng.integers(0, 30000, size=(32, 16))
    report = nanlab.scan(token_ids, rng.integers(0, 30000, size=(32, 16)), num_classes=30000)
    assert report.x_is_ids and not report.unnormalised and report.clean, str(report)
    pixels = rng.integers(0, 256, size=(8, 4, 4)).astype(np.uint8)
    assert nanlab.scan(pixels).unnormalised, "uint8 is read as pixels, which do need scaling"
    assert nanlab.scan(pixels.astype(np.float32)).unnormalised


def test_ignore_index_padding_is_not_a_negative_label_nor_out_of_range():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 100, size=(6, 5))
    y = rng.integers(0, 10, size=(6, 5))
    y[1, 3:] = -100  # padded positions, as Hugging Face collators write them
    y[4, :] = -100
    report = nanlab.scan(x, y, num_classes=10)
    assert report.clean, str(report)
    assert report.padding_samples == [1, 4]
    y[2, 0] = -1  # a real negative label beside the padding
    report = nanlab.scan(x, y, num_classes=10)
    assert report.bad_label_samples == [2] and report.label_problems == ["negative labels"]
    unpadded = nanlab.scan(x, y, num_classes=10, ignore_index=None)
    assert unpadded.bad_label_samples == [1, 2, 4], "without ignore_index, -100 is a negative label like any other"


def test_bad_ignore_index_is_rejected():
    with pytest.raises(NanlabError, match="ignore_index must be an integer or None"):
        nanlab.scan(np.zeros((2, 2)), np.zeros(2), ignore_index="pad")


# -- targets are read by dtype and by what the caller says of the loss, never by shape alone --------------------------
def one_hot(labels, classes):
    return np.eye(classes, dtype=np.float32)[labels]


@pytest.mark.parametrize("num_classes", [None, 3])
def test_one_hot_and_label_smoothed_targets_scan_clean(num_classes):
    x, y = clean_data()
    hard = one_hot(y, 3)
    smoothed = hard * 0.9 + 0.1 / 3  # label smoothing 0.1, as keras' and torch's cross-entropy apply it
    for targets in (hard, smoothed):
        report = nanlab.scan(x, targets, num_classes=num_classes)
        assert report.clean and report.targets == "distributions", str(report)
        assert report.label_problems == [] and report.bad_target_rows == []


def test_an_integer_one_hot_matrix_is_read_as_rows_when_num_classes_says_so():
    x, y = clean_data()
    hard = one_hot(y, 3).astype(np.int64)
    hard[7] = [0, 2, 0]
    report = nanlab.scan(x, hard, num_classes=3)
    assert report.targets == "distributions" and report.bad_target_rows == [7], str(report)


def test_a_soft_target_row_off_one_or_negative_is_named_by_sample():
    x, y = clean_data()
    soft = one_hot(y, 3) * 0.9 + 0.1 / 3
    soft[12] = [0.5, 0.5, 0.3]  # sums to 1.3
    soft[20] = [1.2, -0.1, -0.1]  # sums to 1, but not a distribution
    soft[33] = [np.nan, 0.5, 0.5]
    report = nanlab.scan(x, soft, num_classes=3)
    assert report.targets == "distributions" and report.bad_target_rows == [12, 20, 33], str(report)
    assert "target rows not summing to 1 in samples 12 (sums 1.3)" in str(report)
    assert "target rows with negative entries in samples 20" in str(report)
    assert "non-finite targets in samples 33" in str(report)
    assert report.label_problems == [] and report.bad_label_samples == [], "no row is called a non-integer label"


def test_soft_targets_streamed_from_a_dataloader_keep_global_indices():
    torch = pytest.importorskip("torch")
    x, y = clean_data()
    soft = one_hot(y, 3) * 0.8 + 0.2 / 3
    soft[29] *= 2.0
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.as_tensor(x), torch.as_tensor(soft)),
                                         batch_size=8)
    report = nanlab.scan(loader, progress=False)
    assert report.targets == "distributions" and report.bad_target_rows == [29], str(report)


def test_a_two_column_regression_head_is_not_read_as_classes():
    """(n, 2) float targets (a mean and a spread) are neither class ids nor distributions: regression targets."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 6))
    targets = np.stack([rng.normal(size=40), rng.uniform(0.5, 2.0, size=40)], axis=1)
    report = nanlab.scan(x, targets)
    assert report.targets == "regression" and report.clean, str(report)


def test_float_targets_are_class_ids_only_when_num_classes_says_so():
    """Integral floats without num_classes are regression targets (counts, -1/0/+1 scores): no label check."""
    x, _ = clean_data()
    scores = np.tile([-1.0, 0.0, 3.0, 1.0], 10)
    report = nanlab.scan(x, scores)
    assert report.targets == "regression" and report.clean, str(report)
    as_ids = nanlab.scan(x, scores, num_classes=3)
    assert as_ids.targets == "class ids" and as_ids.label_problems == ["negative labels", "labels >= num_classes (3)"]
    integers = nanlab.scan(x, scores.astype(np.int64))
    assert integers.targets == "class ids" and integers.label_problems == ["negative labels"], "integers: as before"


def test_a_numpy_scan_loads_no_framework():
    code = ("import sys, numpy as np, nanlab; nanlab.scan(np.zeros((4, 2)), np.eye(2)[[0, 1, 1, 0]], progress=False);"
            " print(sorted({'torch', 'tensorflow', 'keras'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
