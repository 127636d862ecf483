"""softmax-overflow, zero-norm, sqrt-at-zero and masked-attention: the recipes match their causes, the numeric
claims the notebooks make hold in both frameworks (torch 2.13 / TF 2.21 on CPU), and nanlab.watch names each cause
on its own broken run and on a variant written differently (another model, other data, the user's own loop)."""
import math

import numpy as np
import pytest

import nanlab
from nanlab.frameworks import get_framework
from nanlab.seeding import seed_everything

FRAMEWORKS = ("torch", "tensorflow")
CAUSES = ("softmax-overflow", "zero-norm", "sqrt-at-zero", "masked-attention")


def _recipe(cause, framework):
    return nanlab.get_cause(cause).recipe(framework)


def torch_grad(torch, fn, values):
    x = torch.tensor(values, requires_grad=True)
    y = fn(x)
    y.sum().backward()
    return y.detach().numpy(), x.grad.numpy()


def tf_grad(tf, fn, values):
    x = tf.constant(values)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return y.numpy(), tape.gradient(y, x).numpy()


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("cause", CAUSES)
def test_recipe_settings_are_the_broken_setting_and_the_fixes(cause, framework):
    assert list(_recipe(cause, framework).SETTINGS) == ["broken", *nanlab.get_cause(cause).fix_ids]


def test_wrong_fixes_are_the_measured_ones():
    wrong = {cause: [(fix.id, fix.still_nonfinite) for fix in nanlab.get_cause(cause).fixes if fix.hides_problem]
             for cause in CAUSES}
    assert wrong == {"softmax-overflow": [("clip-logits", False)], "zero-norm": [], "sqrt-at-zero": [],
                     "masked-attention": [("nan-to-num", True)]}


# --- softmax overflow --------------------------------------------------------------------------------------------

def test_exp_overflows_past_88_72_and_the_hand_written_softmax_divides_inf_by_inf(torch, tf):
    np.testing.assert_array_equal(np.isinf(torch.exp(torch.tensor([88.72, 88.73])).numpy()), [False, True])
    np.testing.assert_array_equal(np.isinf(tf.exp(tf.constant([88.72, 88.73])).numpy()), [False, True])
    logits = [[1.0, 89.0, 2.0]]
    for framework, module in (("torch", torch), ("tensorflow", tf)):
        recipe = _recipe("softmax-overflow", framework)
        as_tensor = module.tensor if framework == "torch" else module.constant
        p = np.asarray(recipe.hand_written_softmax(as_tensor(logits)))
        assert math.isnan(p[0, 1]) and p[0, 0] == 0.0 and p[0, 2] == 0.0  # inf / inf, then x / inf
        fixed = np.asarray(recipe.hand_written_softmax(as_tensor(logits) - 89.0))  # the subtract-max fix
        assert np.isfinite(fixed).all() and fixed[0, 1] == pytest.approx(1.0)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_softmax_overflow_loss_at_logits_past_88(framework, request):
    module = request.getfixturevalue("torch" if framework == "torch" else "tf")
    recipe = _recipe("softmax-overflow", framework)
    big = [[0.0, 100.0, -3.0, 5.0], [2.0, 1.0, 0.0, -1.0]]
    label = [1, 0]
    fused = recipe.SETTINGS["fused-loss"](seed=0, device="cpu").loss_fn
    losses = {"broken": recipe.hand_written_loss, "subtract-max": recipe.subtract_max_loss,
              "log-softmax": recipe.log_softmax_loss, "fused-loss": fused, "clip-logits": recipe.clip_logits_loss}
    results = {}
    for name, loss_fn in losses.items():
        if framework == "torch":
            logits = module.tensor(big, requires_grad=True)
            loss = loss_fn(logits, module.tensor(label))
            loss.backward()
            results[name] = (loss.item(), logits.grad.numpy())
        else:
            results[name] = tf_grad(module, lambda z: loss_fn(module.constant(label), z), big)
    loss, grad = results.pop("broken")
    assert math.isnan(loss) and np.isnan(grad).any()
    for name, (loss, grad) in results.items():
        assert math.isfinite(float(loss)) and np.isfinite(grad).all(), name
    assert float(results["subtract-max"][0]) == pytest.approx(float(results["log-softmax"][0]), abs=1e-6)


@pytest.mark.parametrize("framework, gap", [("torch", 105.0), ("tensorflow", 90.0)])
def test_the_frameworks_softmax_then_log_is_half_a_fix(framework, gap, request):
    """No overflow, but log of a probability that underflowed to 0: past ~104 in torch (denormals kept), ~87 on
    TensorFlow's CPU (flushed)."""
    module = request.getfixturevalue("torch" if framework == "torch" else "tf")
    recipe = _recipe("softmax-overflow", framework)
    logits, label = [[0.0, gap, 1.0, 2.0]], [0]
    if framework == "torch":
        loss = recipe.framework_softmax_loss(module.tensor(logits), module.tensor(label))
    else:
        loss = recipe.framework_softmax_loss(module.constant(label), module.constant(logits))
    assert math.isinf(float(loss))
    assert math.isfinite(float(recipe.SETTINGS["fused-loss"](seed=0, device="cpu").loss_fn(
        *((module.tensor(logits), module.tensor(label)) if framework == "torch"
          else (module.constant(label), module.constant(logits))))))


def test_clipping_logits_to_one_caps_every_probability_at_0_71(torch):
    recipe = _recipe("softmax-overflow", "torch")
    confident = torch.tensor([[50.0, -50.0, -50.0, -50.0]])
    p = recipe.hand_written_softmax(confident.clamp(-1.0, 1.0))
    cap = math.e / (math.e + 3 / math.e)
    assert p[0, 0].item() == pytest.approx(cap) and cap == pytest.approx(0.711, abs=1e-3)
    assert recipe.clip_logits_loss(confident, torch.tensor([0])).item() == pytest.approx(-math.log(cap))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_clip_logits_learns_the_classes_but_its_loss_stops_at_the_cap(framework):
    clipped = nanlab.reproduce("softmax-overflow", framework, "cpu", seed=0, fix="clip-logits")
    fused = nanlab.reproduce("softmax-overflow", framework, "cpu", seed=0, fix="log-softmax")
    assert clipped.finite and clipped.learned and fused.learned
    floor = -math.log(math.e / (math.e + 3 / math.e))
    assert min(clipped.losses) >= floor - 1e-4  # no batch can go below the cap's floor
    assert min(fused.losses) < 0.1 * floor


# --- zero norm -----------------------------------------------------------------------------------------------------

def test_torch_gradients_of_norms_at_a_zero_vector(torch):
    F = torch.nn.functional
    weights = torch.tensor([1.0, 2.0, 3.0])
    zero = [0.0, 0.0, 0.0]
    assert torch_grad(torch, lambda x: x.norm(), zero)[1].tolist() == [0.0, 0.0, 0.0]  # subgradient 0
    assert np.isnan(torch_grad(torch, lambda x: (x * x).sum().sqrt(), zero)[1]).all()  # inf * 0
    _, normalize = torch_grad(torch, lambda x: (F.normalize(x, dim=-1) * weights).sum(), zero)
    np.testing.assert_allclose(normalize, [1e12, 2e12, 3e12], rtol=1e-6)  # 1 / eps, eps = 1e-12
    recipe = _recipe("zero-norm", "torch")
    _, eps = torch_grad(torch, lambda x: (recipe.eps_denominator_normalize(x) * weights).sum(), zero)
    np.testing.assert_allclose(eps, [1e7, 2e7, 3e7], rtol=1e-5)  # 1 / eps, eps = 1e-7
    value, hand = torch_grad(torch, recipe.hand_written_normalize, zero)
    assert np.isnan(value).all() and np.isnan(hand).all()


def test_tensorflow_gradients_of_norms_at_a_zero_vector(tf):
    weights = tf.constant([1.0, 2.0, 3.0])
    zero = [0.0, 0.0, 0.0]
    assert np.isnan(tf_grad(tf, lambda x: tf.norm(x), zero)[1]).all()  # unlike torch's norm: NaN
    assert np.isnan(tf_grad(tf, lambda x: tf.math.reduce_euclidean_norm(x), zero)[1]).all()
    _, l2 = tf_grad(tf, lambda x: tf.reduce_sum(tf.math.l2_normalize(x) * weights), zero)
    np.testing.assert_allclose(l2, [1e6, 2e6, 3e6], rtol=1e-5)  # rsqrt(max(0, 1e-12)) = 1e6
    recipe = _recipe("zero-norm", "tensorflow")
    # tf.norm's NaN gradient is multiplied by an upstream gradient of exactly 0 here (d(x / n) / dn = -x / n**2):
    # TensorFlow's SqrtGrad gives 0 for a zero upstream gradient, so the eps fix stays finite.
    _, eps = tf_grad(tf, lambda x: tf.reduce_sum(recipe.eps_denominator_normalize(x) * weights), zero)
    np.testing.assert_allclose(eps, [1e7, 2e7, 3e7], rtol=1e-5)
    value, hand = tf_grad(tf, recipe.hand_written_normalize, zero)
    assert np.isnan(value).all() and np.isinf(hand).all()


def test_framework_normalisation_layers_carry_an_epsilon(torch, tf, keras):
    """The Habr claim 'popular frameworks' normalisation layers already add a small number' holds for these."""
    zero_row = [[0.0, 0.0, 0.0]]
    assert torch.nn.functional.normalize(torch.tensor(zero_row)).tolist() == zero_row
    assert torch.nn.RMSNorm(3)(torch.tensor(zero_row)).tolist() == zero_row
    assert tf.math.l2_normalize(tf.constant(zero_row)).numpy().tolist() == zero_row
    assert keras.layers.UnitNormalization()(tf.constant(zero_row)).numpy().tolist() == zero_row


# --- sqrt at zero --------------------------------------------------------------------------------------------------

def test_std_of_a_constant_sequence_finite_forward_nan_backward(torch, tf):
    constant = [[2.5, 2.5, 2.5, 2.5]]
    torch_recipe, tf_recipe = _recipe("sqrt-at-zero", "torch"), _recipe("sqrt-at-zero", "tensorflow")

    def as_sequence(fn):  # the recipes pool over axis 1: (batch, time, units)
        return lambda x: fn(x[..., None])

    value, grad = torch_grad(torch, as_sequence(torch_recipe.hand_written_std), constant)
    assert value.tolist() == [[0.0]] and np.isnan(grad).all()
    value, grad = tf_grad(tf, as_sequence(tf_recipe.hand_written_std), constant)
    assert value.tolist() == [[0.0]] and np.isnan(grad).all()
    for recipe, grad_of in ((torch_recipe, lambda fn: torch_grad(torch, fn, constant)),
                            (tf_recipe, lambda fn: tf_grad(tf, fn, constant))):
        for fixed in (recipe.eps_under_root_std, recipe.safe_sqrt_std):
            value, grad = grad_of(as_sequence(fixed))
            assert np.isfinite(value).all() and grad.tolist() == [[0.0] * 4]


def test_the_frameworks_std_at_a_constant_input_torch_zero_tensorflow_nan(torch, tf):
    constant = [2.5, 2.5, 2.5, 2.5]
    assert torch_grad(torch, lambda x: x.std(), constant)[1].tolist() == [0.0] * 4
    assert torch_grad(torch, lambda x: x.std(correction=0), constant)[1].tolist() == [0.0] * 4
    value, grad = tf_grad(tf, lambda x: tf.math.reduce_std(x), constant)
    assert value == 0.0 and np.isnan(grad).all()


# --- masked attention ----------------------------------------------------------------------------------------------

def test_a_softmax_over_a_row_of_minus_inf_is_nan(torch, tf):
    assert np.isnan(torch.softmax(torch.full((1, 3), -math.inf), dim=-1).numpy()).all()
    assert np.isnan(tf.nn.softmax(tf.fill((1, 3), -math.inf)).numpy()).all()
    assert np.isfinite(torch.softmax(torch.full((1, 3), -1e9), dim=-1).numpy()).all()


def _nan_to_num_gradients(torch, masking):
    valid = torch.tensor([[True, False], [False, False]])
    scores = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    weights = torch.nan_to_num(torch.softmax(masking(scores, valid), dim=-1))
    (weights * torch.tensor([1.0, 2.0])).sum().backward()
    return weights.detach().numpy(), scores.grad.numpy()


def test_nan_to_num_after_the_softmax_depends_on_how_the_mask_is_applied(torch):
    recipe = _recipe("masked-attention", "torch")
    weights, grad = _nan_to_num_gradients(torch, lambda s, valid: s + recipe.mask_bias(valid))
    assert weights.tolist() == [[1.0, 0.0], [0.0, 0.0]] and np.isnan(grad[1]).all()  # the added mask passes NaN
    weights, grad = _nan_to_num_gradients(torch, lambda s, valid: s.masked_fill(~valid, -math.inf))
    assert grad.tolist() == [[0.0, 0.0], [0.0, 0.0]]  # masked_fill's backward writes 0 where it filled


def test_tensorflow_nan_to_num_after_an_added_mask_still_has_a_nan_gradient(tf):
    recipe = _recipe("masked-attention", "tensorflow")
    valid = tf.constant([[True, False], [False, False]])
    weights, grad = tf_grad(tf, lambda s: recipe.nan_to_num_softmax(s, valid) * [1.0, 2.0], [[1.0, 2.0], [3.0, 4.0]])
    assert weights.tolist() == [[1.0, 0.0], [0.0, 0.0]] and np.isnan(grad[1]).all()


def test_the_frameworks_attention_on_a_fully_masked_row(torch, tf, keras):
    """torch 2.13: scaled_dot_product_attention gives 0 for a fully masked row, nn.MultiheadAttention NaN; Keras'
    MultiHeadAttention adds a large finite negative number, so its row stays finite."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=torch.zeros(1, 1, 3, 5, dtype=bool))
    assert out.abs().max().item() == 0.0
    attention = torch.nn.MultiheadAttention(4, 1, batch_first=True)
    x = torch.randn(1, 5, 4)
    out, _ = attention(x, x, x, key_padding_mask=torch.ones(1, 5, dtype=torch.bool))
    assert torch.isnan(out).all()
    layer = keras.layers.MultiHeadAttention(num_heads=1, key_dim=4)
    x = tf.random.normal((1, 5, 4), seed=0)
    out = layer(x, x, attention_mask=tf.zeros((1, 5, 5), tf.bool))
    assert bool(tf.reduce_all(tf.math.is_finite(out)))


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_nan_to_num_prints_a_finite_loss_at_the_step_whose_gradient_is_nan(framework):
    broken = nanlab.reproduce("masked-attention", framework, "cpu", seed=0)
    patched = nanlab.reproduce("masked-attention", framework, "cpu", seed=0, fix="nan-to-num")
    step = broken.first_nonfinite_step
    assert step is not None and math.isnan(broken.losses[step])
    assert patched.first_nonfinite_step == step
    assert math.isfinite(patched.losses[step]) and math.isnan(patched.grad_norms[step])


# --- diagnosis: the broken runs and variants written differently ---------------------------------------------------

def _watch_broken(cause, framework):
    cause = nanlab.get_cause(cause)
    seed_everything(0, framework)
    training = cause.recipe(framework).SETTINGS["broken"](seed=0, device="cpu")
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(training):
            get_framework(framework).loop.train(training, cause.steps)
    return raised.value.report


EXPECTED_EVIDENCE = {  # (phase, op) per framework: the first op that turned finite into non-finite
    ("softmax-overflow", "torch"): ("loss", "exp"), ("softmax-overflow", "tensorflow"): ("loss", "exp"),
    ("zero-norm", "torch"): ("forward", "rsqrt"), ("zero-norm", "tensorflow"): ("forward", "rsqrt"),
    ("sqrt-at-zero", "torch"): ("backward", "sqrt"), ("sqrt-at-zero", "tensorflow"): ("backward", "sqrtgrad"),
    ("masked-attention", "torch"): ("forward", "softmax"), ("masked-attention", "tensorflow"): ("forward", "softmax"),
}


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("cause", CAUSES)
def test_the_watch_names_the_cause_of_its_broken_run(cause, framework):
    report = _watch_broken(cause, framework)
    assert report.cause == cause, str(report)
    assert (report.phase, report.op) == EXPECTED_EVIDENCE[cause, framework], str(report)
    assert report.step == nanlab.reproduce(cause, framework, "cpu", seed=0).first_nonfinite_step


def test_zero_norm_names_division_by_zero_as_the_close_runner_up():
    """rsqrt of 0 is a division by zero too; the zero-norm rule is more specific (the zero is a vector's length)."""
    report = _watch_broken("zero-norm", "torch")
    assert (report.cause, report.runner_up) == ("zero-norm", "division-by-zero")


# Variants in PyTorch: other models, other data, the user's own loop with nanlab.watch(model, optimizer, loss_fn).

def _torch_own_loop(torch, model, x, y, loss_fn, steps=5, lr=0.1):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, loss_fn) as watch:
            for _ in range(steps):
                optimizer.zero_grad()
                watch.loss_fn(model(x), y).backward()
                optimizer.step()
    return raised.value.report


def test_torch_variants_are_named(torch):
    nn, F = torch.nn, torch.nn.functional

    class TemperatureSoftmax(nn.Module):
        """Probabilities from a hand-written softmax at temperature 0.01 (logits x 100)."""

        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(5, 3)

        def forward(self, x):
            e = torch.exp(self.linear(x) / 0.01)
            return e / e.sum(dim=-1, keepdim=True)

    class RMSNormTokens(nn.Module):
        """Token embeddings (padding id 0 embeds to zeros), RMS-normalised without an epsilon, averaged."""

        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 8, padding_idx=0)
            self.head = nn.Linear(8, 2)

        def forward(self, tokens):
            e = self.embed(tokens)
            return self.head((e * torch.rsqrt(e.pow(2).mean(dim=-1, keepdim=True))).mean(dim=1))

    class FeatureStd(nn.Module):
        """The std over the features of each sample (a layer-norm-like scale), written as sqrt(var)."""

        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 6, bias=False)
            self.head = nn.Linear(1, 2)

        def forward(self, x):
            h = self.linear(x)
            return self.head(torch.sqrt(h.var(dim=-1, keepdim=True, correction=0)))

    class PaddedMultiheadAttention(nn.Module):
        """nn.MultiheadAttention with a key padding mask; a sequence of length 0 masks every key."""

        def __init__(self):
            super().__init__()
            self.attention = nn.MultiheadAttention(4, 2, batch_first=True)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            padding = x.abs().sum(dim=-1) == 0
            out, _ = self.attention(x, x, x, key_padding_mask=padding)
            return self.head(out.mean(dim=1))

    torch.manual_seed(0)
    x = torch.randn(16, 5)
    report = _torch_own_loop(torch, TemperatureSoftmax(), x, torch.randint(0, 3, (16,)),
                             lambda p, y: F.nll_loss(torch.log(p), y))
    assert (report.cause, report.op) == ("softmax-overflow", "exp"), str(report)

    tokens = torch.randint(1, 10, (8, 4))
    tokens[3, 2] = 0  # one padding token
    report = _torch_own_loop(torch, RMSNormTokens(), tokens, torch.randint(0, 2, (8,)), F.cross_entropy)
    assert (report.cause, report.op, report.samples) == ("zero-norm", "rsqrt", [3]), str(report)

    x = torch.randn(8, 4)
    x[5] = 0.0  # an all-zero sample: its features do not vary
    report = _torch_own_loop(torch, FeatureStd(), x, torch.randint(0, 2, (8,)), F.cross_entropy)
    assert (report.cause, report.phase, report.op) == ("sqrt-at-zero", "backward", "sqrt"), str(report)

    x = torch.randn(8, 5, 4)
    x[2] = 0.0  # an empty sequence: every key is padding
    report = _torch_own_loop(torch, PaddedMultiheadAttention(), x, torch.randint(0, 2, (8,)), F.cross_entropy)
    assert report.cause == "masked-attention" and report.phase == "forward", str(report)


# Variants in Keras: other models and data, trained with model.fit and the watch as a callback.

def test_a_fractional_power_at_zero_is_named_sqrt_at_zero_in_torch(torch):
    """A siamese distance written as ((a - b) ** 2).sum() ** 0.5, not the recipe's std pooling: a pair of identical
    inputs sits at distance 0, where the power's derivative is infinite (issue 17: fractional powers)."""

    class Siamese(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))

        def forward(self, pair):
            a, b = self.embed(pair[:, 0]), self.embed(pair[:, 1])
            return ((a - b) ** 2).sum(dim=1) ** 0.5

    def contrastive(distance, same):
        return (same * distance + (1 - same) * torch.relu(1 - distance)).mean()

    torch.manual_seed(0)
    pairs, same = torch.randn(16, 2, 4), (torch.rand(16) < 0.5).float()
    pairs[5, 1] = pairs[5, 0]  # a duplicated record paired with itself
    report = _torch_own_loop(torch, Siamese(), pairs, same, contrastive)
    assert (report.cause, report.phase, report.op, report.samples) == ("sqrt-at-zero", "backward", "pow", [5]), \
        str(report)
    assert "fractional power" in report.cause_reason and report.verdicts == ["sqrt-at-zero"]


def test_a_square_root_of_a_variance_rounded_below_zero_is_named_sqrt_at_zero_in_torch(torch):
    """Std pooling written as sqrt(E[x**2] - E[x]**2) over a stuck sensor's constant readings: the difference
    rounds below 0 in float32 (-9.3e-10 for 0.1 at every step on x86), and its square root is NaN in the forward."""

    def variance(sequences):
        return (sequences ** 2).mean(dim=-1) - sequences.mean(dim=-1) ** 2

    class StdPool(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(3, 2)

        def forward(self, sequences):  # (batch, channels, time)
            return self.head(variance(sequences).sqrt())

    torch.manual_seed(0)
    sequences, labels = torch.randn(16, 3, 8), torch.randint(0, 2, (16,))
    # the rounding depends on the reduction order this machine's kernels use: take a reading that rounds below 0
    stuck = next((value for value in (0.1, 0.2, 1.3, 7.7, 0.7, 3.3, 0.03)
                  if variance(torch.full((1, 3, 8), value)).min() < 0), None)
    if stuck is None:
        pytest.skip("no candidate reading rounds below 0 with this machine's reductions")
    sequences[2] = stuck  # a stuck sensor
    report = _torch_own_loop(torch, StdPool(), sequences, labels, torch.nn.functional.cross_entropy)
    assert (report.cause, report.phase, report.op, report.samples) == ("sqrt-at-zero", "forward", "sqrt", [2]), \
        str(report)
    assert "below its domain" in report.cause_reason


def _keras_fit(keras, model, x, y, loss, lr=0.1):
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=loss)
    watch = nanlab.watch(model)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        model.fit(x, y, batch_size=len(x), epochs=3, shuffle=False, verbose=0, callbacks=[watch])
    return raised.value.report


def test_keras_variants_are_named(tf, keras):
    class Lambda(keras.layers.Layer):
        def __init__(self, fn, **kwargs):
            super().__init__(**kwargs)
            self.fn = fn

        def call(self, x):
            return self.fn(x)

    def temperature_softmax(z):
        e = tf.exp(z / 0.01)
        return e / tf.reduce_sum(e, axis=-1, keepdims=True)

    def rms_normalize(h):
        return h * tf.math.rsqrt(tf.reduce_mean(tf.square(h), axis=-1, keepdims=True))

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 5)).astype(np.float32)
    y = rng.integers(0, 3, size=16)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3), Lambda(temperature_softmax, name="soft")])
    report = _keras_fit(keras, model, x, y, "sparse_categorical_crossentropy")
    assert (report.cause, report.module, report.op) == ("softmax-overflow", "soft", "exp"), str(report)

    x[4] = 0.0  # a missing record
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, use_bias=False),
                              Lambda(rms_normalize, name="rms"), keras.layers.Dense(3)])
    report = _keras_fit(keras, model, x, y, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert (report.cause, report.module, report.op, report.samples) == ("zero-norm", "rms", "rsqrt", [4]), str(report)

    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, use_bias=False),
                              Lambda(lambda h: tf.math.reduce_std(h, axis=-1, keepdims=True), name="std"),
                              keras.layers.Dense(3)])
    report = _keras_fit(keras, model, x, y, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert (report.cause, report.phase, report.op) == ("sqrt-at-zero", "backward", "sqrtgrad"), str(report)

    class PaddedSelfAttention(keras.layers.Layer):
        """Self-attention over a padded sequence; padding (all-zero) tokens are masked with where(..., -inf)."""

        def build(self, input_shape):
            self.qkv = keras.layers.Dense(3 * input_shape[-1])

        def call(self, x):
            q, k, v = tf.split(self.qkv(x), 3, axis=-1)
            keys_valid = tf.reduce_any(x != 0, axis=-1)[:, None, :]
            scores = tf.where(keys_valid, tf.matmul(q, k, transpose_b=True), -np.inf)
            return tf.reduce_mean(tf.matmul(tf.nn.softmax(scores), v), axis=1)

    sequences = rng.normal(size=(16, 4, 3)).astype(np.float32)
    sequences[7] = 0.0  # an empty sequence: every key is padding
    model = keras.Sequential([keras.Input((4, 3)), PaddedSelfAttention(name="attention"), keras.layers.Dense(3)])
    report = _keras_fit(keras, model, sequences, y, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert (report.cause, report.module, report.op, report.samples) == ("masked-attention", "attention", "softmax",
                                                                         [7]), str(report)


def test_a_fractional_power_at_zero_is_named_sqrt_at_zero_in_keras(tf, keras):
    """The torch siamese distance (... ** 0.5 over a duplicated pair) in Keras. (The stuck-sensor variance has no
    Keras twin: TensorFlow's batched reductions give exactly 0 for a constant row, so nothing rounds below 0.)"""

    class Distance(keras.layers.Layer):
        def build(self, input_shape):
            self.embed = keras.layers.Dense(3)

        def call(self, pair):
            a, b = self.embed(pair[:, 0]), self.embed(pair[:, 1])
            return tf.reduce_sum((a - b) ** 2, axis=1, keepdims=True) ** 0.5

    def contrastive(same, distance):
        return tf.reduce_mean(same * distance + (1 - same) * tf.nn.relu(1 - distance))

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    pairs = rng.normal(size=(16, 2, 4)).astype(np.float32)
    pairs[5, 1] = pairs[5, 0]  # a duplicated record paired with itself
    same = (rng.random(16) < 0.5).astype(np.float32)[:, None]
    model = keras.Sequential([keras.Input((2, 4)), Distance(name="distance")])
    report = _keras_fit(keras, model, pairs, same, contrastive)
    assert (report.cause, report.phase, report.op, report.samples) == ("sqrt-at-zero", "backward", "pow", [5]), \
        str(report)
    assert "fractional power" in report.cause_reason
