"""A degenerate statistic named from the count of the elements it reduced (``report.reduced_count``), not only from
a batch of one: a hand-written group norm whose groups hold one channel, and a std over an axis of length one, in
batches of 16 (programs written as a user writes them, not the degenerate-statistics recipe).

TensorFlow has no such culprit to count: its statistics (``tf.math.reduce_std``, ``tf.nn.moments``,
``keras.ops.std``/``var``, ``GroupNormalization``) are population statistics, finite over one element; an unbiased
one written by hand divides by ``n - 1`` itself, and that division is the culprit the division rules read."""
import numpy as np
import pytest

import nanlab
from nanlab.report import NonFiniteReport
from nanlab.seeding import seed_everything

BATCH, FEATURES = 16, 8


def train(torch, model):
    from torch.nn import functional as F

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(BATCH, FEATURES, generator=generator), torch.randint(0, 2, (BATCH,), generator=generator)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, F.cross_entropy) as watch:
            optimizer.zero_grad()
            watch.loss_fn(model(x), y).backward()
            optimizer.step()
    return raised.value.report


@pytest.mark.parametrize("layout", ["group norm of one channel per group", "std over an axis of length one"])
def test_torch_a_std_over_groups_of_one_is_named_from_the_reduced_count(torch, layout):
    from torch import nn

    class GroupStandardised(nn.Module):
        def __init__(self, channels: int, groups: int):
            super().__init__()
            self.fc, self.head, self.groups = nn.Linear(FEATURES, channels), nn.Linear(channels, 2), groups

        def forward(self, x):
            hidden = self.fc(x)
            if layout.startswith("group norm"):
                grouped = hidden.view(len(hidden), self.groups, -1)  # 4 channels in 4 groups: one each
                hidden = ((grouped - grouped.mean(-1, keepdim=True)) / (grouped.std(-1, keepdim=True) + 1e-5))
            else:
                hidden = hidden / (hidden[:, :1].std(dim=1, keepdim=True) + 1e-5)  # the first channel's spread
            return self.head(hidden.reshape(len(x), -1))

    seed_everything(0, "torch")
    with pytest.warns(UserWarning, match="degrees of freedom"):  # torch's own hint, which training scrolls past
        report = train(torch, GroupStandardised(4, 4))
    assert (report.phase, report.op, report.batch_size, report.reduced_count) == ("forward", "std", BATCH, 1)
    assert report.cause == "degenerate-statistics" and "groups of 1 element" in report.cause_reason, str(report)
    assert NonFiniteReport.from_dict(report.to_dict()).reduced_count == 1


def test_torch_a_std_over_groups_of_two_counts_two_and_stays_finite(torch):
    data = torch.randn(BATCH, 3, 2, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(data.std(-1)).all()  # the count that makes it NaN is 1, nothing above


def test_tensorflow_statistics_of_one_element_are_population_statistics_and_finite(tf):
    from nanlab.frameworks.tensorflow.backend import keras

    one_per_group = tf.constant(np.random.default_rng(0).normal(size=(BATCH, 4, 1)), tf.float32)
    assert np.isfinite(tf.math.reduce_std(one_per_group, axis=-1)).all()
    assert np.isfinite(tf.nn.moments(one_per_group, axes=[-1])[1]).all()
    assert np.isfinite(keras.ops.var(one_per_group, axis=-1)).all()
    layer = keras.layers.GroupNormalization(groups=4)
    assert np.isfinite(layer(tf.reshape(one_per_group, (BATCH, 4)))).all()
