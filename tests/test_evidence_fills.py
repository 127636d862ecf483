"""A deliberate fill followed to the op that makes it a value: a max-pool over a document whose every token is masked
with -inf returns -inf, the next layer turns it into NaN, and the report blames the pooling, names the fill's op
and the cause (programs written as a user writes them, not the masked-attention recipe)."""
import numpy as np
import pytest

import nanlab
from nanlab.seeding import seed_everything

VOCABULARY, TOKENS, FEATURES, BATCH, EMPTY = 50, 6, 16, 8, 5  # document EMPTY has every token masked


def documents(all_masked: bool = True):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCABULARY, (BATCH, TOKENS))
    mask = rng.random((BATCH, TOKENS)) < 0.7
    mask[:, 0] = True  # every document keeps a token...
    if all_masked:
        mask[EMPTY] = False  # ...but this one, whose tokens the export lost
    return tokens, mask, rng.integers(0, 3, BATCH)


def torch_classifier(torch):
    from torch import nn

    class DocumentClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCABULARY, FEATURES)
            self.pool = nn.AdaptiveMaxPool1d(1)
            self.head = nn.Linear(FEATURES, 3)

        def forward(self, tokens, mask):
            hidden = self.embed(tokens).masked_fill(~mask[..., None], float("-inf"))  # padding never wins the max
            return self.head(self.pool(hidden.transpose(1, 2)).squeeze(-1))

    return DocumentClassifier()


def train_torch(torch, all_masked: bool):
    from torch.nn import functional as F

    seed_everything(0, "torch")
    model = torch_classifier(torch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    tokens, mask, labels = (torch.as_tensor(a) for a in documents(all_masked))
    with nanlab.watch(model, optimizer, F.cross_entropy) as watch:
        for _ in range(3):
            optimizer.zero_grad()
            watch.loss_fn(model(tokens, mask), labels).backward()
            optimizer.step()
    return watch


def test_torch_a_max_pool_over_an_all_masked_document_is_blamed_with_its_fill(torch):
    with pytest.raises(nanlab.NonFiniteError) as raised:
        train_torch(torch, all_masked=True)
    report = raised.value.report
    assert (report.step, report.phase, report.module, report.op) == (0, "forward", "pool", "adaptive_max_pool1d")
    assert report.value == "-inf" and report.samples == [EMPTY]
    assert report.filled_from == "`DocumentClassifier` / op `masked_fill`"
    assert report.cause == "masked-attention" and "every value was the -inf fill" in report.cause_reason, str(report)
    assert report.filled_from in str(report)
    maxima = {entry.module: entry for entry in report.activation_maxima}  # the -inf shows from the pool on
    assert not maxima["embed"].nonfinite and maxima["pool"].nonfinite and maxima["head"].nonfinite


def test_torch_documents_that_keep_a_token_train_under_the_watch(torch):
    watch = train_torch(torch, all_masked=False)
    assert watch.step == 3 and watch.report is None


def test_torch_max_then_x_minus_max_blames_the_max_and_two_finfo_min_masks_blame_the_add(torch):
    """A hand-written stable softmax over an all-masked row (the max is -inf, then -inf - (-inf)); and a causal and a
    padding mask of finfo.min added together, which overflows to -inf."""
    from torch import nn
    from torch.nn import functional as F

    class HandAttention(nn.Module):
        def __init__(self, finfo_masks: bool):
            super().__init__()
            self.score, self.finfo_masks = nn.Linear(FEATURES, 1), finfo_masks

        def forward(self, x, mask):
            scores = self.score(x).squeeze(-1)
            if self.finfo_masks:
                lowest = torch.finfo(scores.dtype).min
                scores = scores.masked_fill(~mask, lowest) + torch.zeros_like(scores).masked_fill(~mask, lowest)
                return (torch.softmax(scores, dim=-1)[..., None] * x).sum(1)
            scores = scores.masked_fill(~mask, float("-inf"))
            shifted = scores - scores.max(dim=-1, keepdim=True).values
            weights = shifted.exp() / shifted.exp().sum(-1, keepdim=True)
            return (weights[..., None] * x).sum(1)

    _, mask, _ = documents()
    masked_somewhere = np.flatnonzero((~mask).any(axis=1)).tolist()  # finfo.min + finfo.min overflows wherever masked
    x, mask = torch.randn(BATCH, TOKENS, FEATURES, generator=torch.Generator().manual_seed(0)), torch.as_tensor(mask)
    for finfo_masks, op, rows, cause_words in ((False, "max", [EMPTY], "every value was the -inf fill"),
                                               (True, "add", masked_somewhere, "two masks added together")):
        seed_everything(0, "torch")
        model = HandAttention(finfo_masks)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with pytest.raises(nanlab.NonFiniteError) as raised:
            with nanlab.watch(model, optimizer, F.mse_loss) as watch:
                optimizer.zero_grad()
                watch.loss_fn(model(x, mask), torch.zeros(BATCH, FEATURES)).backward()
                optimizer.step()
        report = raised.value.report
        assert (report.op, report.samples) == (op, rows), str(report)
        assert "masked_fill" in report.filled_from
        assert report.cause == "masked-attention" and cause_words in report.cause_reason, str(report)


def keras_classifier():
    from nanlab.frameworks.tensorflow.backend import keras, tf

    class DocumentClassifier(keras.Model):
        def __init__(self):
            super().__init__()
            self.embed = keras.layers.Embedding(VOCABULARY, FEATURES)
            self.pool = keras.layers.GlobalMaxPooling1D()
            self.head = keras.layers.Dense(3)

        def call(self, inputs):
            tokens, mask = inputs
            hidden = tf.where(mask[..., None], self.embed(tokens), float("-inf"))  # padding never wins the max
            return self.head(self.pool(hidden))

    return DocumentClassifier()


def fit_keras(all_masked: bool):
    from nanlab.frameworks.tensorflow.backend import keras

    seed_everything(0, "tensorflow")
    tokens, mask, labels = documents(all_masked)
    model = keras_classifier()
    model((tokens[:1], mask[:1]))  # built on one document, as a subclassed model needs
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    watch = nanlab.watch(model)
    model.fit((tokens, mask), labels, batch_size=BATCH, epochs=3, shuffle=False, verbose=0, callbacks=[watch])
    return watch


def test_keras_a_max_pool_over_an_all_masked_document_is_blamed_with_its_fill(tf):
    with pytest.raises(nanlab.NonFiniteError) as raised:
        fit_keras(all_masked=True)
    report = raised.value.report
    assert (report.step, report.phase, report.module, report.op) == (0, "forward", "global_max_pooling1d", "max")
    assert report.value == "-inf" and report.samples == [EMPTY]
    assert report.filled_from == "`document_classifier` / op `selectv2`"
    assert report.cause == "masked-attention" and "every value was the -inf fill" in report.cause_reason, str(report)


def test_keras_documents_that_keep_a_token_train_under_the_watch(tf):
    watch = fit_keras(all_masked=False)
    assert watch.step == 3 and watch.report is None


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_the_masked_attention_recipe_still_names_itself(framework):
    pytest.importorskip("torch" if framework == "torch" else "tensorflow")
    from nanlab.frameworks import get_framework

    cause = nanlab.get_cause("masked-attention")
    seed_everything(0, framework)
    training = cause.recipe(framework).broken(seed=0, device="cpu")
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(training):
            get_framework(framework).loop.train(training, cause.steps)
    assert raised.value.report.cause == cause.id, str(raised.value.report)
