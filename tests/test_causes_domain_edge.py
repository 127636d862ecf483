"""domain-edge: acos (asin, atanh) at the edge of its domain. The numeric facts the notebooks state, in both
frameworks (torch 2.13 / TF 2.21 on CPU); the recipe's margins on and off the edge; the rule on reports in the
vocabulary; and nanlab.watch naming the cause on its broken runs and on a program written differently (a siamese
geodesic distance over a duplicated pair, in the user's own loop and in Keras fit)."""
import math

import numpy as np
import pytest

import nanlab
from nanlab.diagnosis import rank
from nanlab.frameworks import get_framework
from nanlab.report import NonFiniteReport
from nanlab.seeding import seed_everything
from nanlab.watching.vocabulary import InputStats, OpFamily

CAUSE = "domain-edge"
FRAMEWORKS = ("torch", "tensorflow")
ABOVE_ONE = float(np.nextafter(np.float32(1), np.float32(2)))  # 1.0000001: one float32 ulp above 1


def _recipe(framework):
    return nanlab.get_cause(CAUSE).recipe(framework)


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


def grad_of(framework, request):
    """``grad(fn, values) -> (value, gradient)`` in one framework, and its math module."""
    if framework == "torch":
        torch = request.getfixturevalue("torch")
        return (lambda fn, values: torch_grad(torch, fn, values)), torch
    tf = request.getfixturevalue("tf")
    return (lambda fn, values: tf_grad(tf, fn, values)), tf.math


# --- the recipe -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_recipe_settings_are_the_broken_setting_and_the_fixes(framework):
    assert list(_recipe(framework).SETTINGS) == ["broken", *nanlab.get_cause(CAUSE).fix_ids]


def test_the_wrong_fix_is_the_measured_one():
    cause = nanlab.get_cause(CAUSE)
    assert [(fix.id, fix.still_nonfinite) for fix in cause.fixes if fix.hides_problem] == [("clamp-unit", True)]
    assert cause.number == 17 and cause.frameworks == FRAMEWORKS


def test_the_class_weights_start_evenly_around_the_circle():
    from nanlab.causes.domain_edge import NUM_CLASSES, class_directions

    directions = class_directions()
    assert directions.shape == (NUM_CLASSES, 2) and directions.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(directions @ directions.T, [[1, 0, -1, 0], [0, 1, 0, -1], [-1, 0, 1, 0],
                                                           [0, -1, 0, 1]], atol=1e-7)


# --- the mechanism: numeric facts -----------------------------------------------------------------------------------

@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_acos_is_nan_past_one_and_its_gradient_infinite_at_one(framework, request):
    grad, math_ops = grad_of(framework, request)
    value, gradient = grad(math_ops.acos, [1.0, -1.0, ABOVE_ONE, 0.5])
    assert value[0] == 0.0 and value[1] == pytest.approx(math.pi) and math.isnan(value[2])
    assert gradient[0] == -math.inf and gradient[1] == -math.inf and math.isnan(gradient[2])
    assert gradient[3] == pytest.approx(-1 / math.sqrt(0.75))
    value, gradient = grad(math_ops.asin, [1.0, -1.0, ABOVE_ONE])
    assert math.isnan(value[2]) and gradient.tolist()[:2] == [math.inf, math.inf]
    value, gradient = grad(math_ops.atanh, [1.0, -1.0])  # atanh is infinite at the edge itself
    assert value.tolist() == [math.inf, -math.inf] and gradient.tolist() == [math.inf, math.inf]


def test_log1p_at_minus_one_is_a_log_of_zero_not_a_domain_edge(torch, tf):
    assert torch.log1p(torch.tensor(-1.0)).item() == -math.inf
    assert float(tf.math.log1p(tf.constant(-1.0))) == -math.inf


def test_a_float32_cosine_rounds_to_one_below_2_4e_4_rad():
    """1 - theta**2 / 2 is within half an ulp (2.98e-8) of 1 for theta below sqrt(2 * 2.98e-8) = 2.44e-4."""
    assert np.cos(np.float32(2.4e-4)) == np.float32(1.0)
    assert np.cos(np.float32(2.5e-4)) < np.float32(1.0)
    assert np.float32(1.0) - np.float32(1e-8) == np.float32(1.0)  # an eps of 1e-8 vanishes next to 1 in float32
    assert np.float32(1.0) - np.float32(1e-7) < np.float32(1.0)


def test_a_cosine_of_a_vector_with_itself_exceeds_one_in_torch(torch):
    """pytorch/pytorch#18057: F.cosine_similarity, and the hand-written a . b / (|a| |b|), of a vector with itself."""
    F = torch.nn.functional
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(200, 64, generator=generator)
    library = F.cosine_similarity(vectors, vectors, dim=-1)
    by_hand = (vectors * vectors).sum(-1) / (vectors.norm(dim=-1) * vectors.norm(dim=-1))
    unit = F.normalize(vectors, dim=-1)
    for cosine in (library, by_hand, (unit * unit).sum(-1)):
        assert (cosine > 1).any() and (cosine == 1).any() and (cosine - 1).abs().max().item() < 1e-6
        assert torch.isnan(torch.acos(cosine)).any()


def test_a_cosine_of_a_vector_with_itself_exceeds_one_in_tensorflow(tf, keras):
    vectors = tf.random.stateless_normal((200, 64), seed=(0, 0))
    unit = tf.math.l2_normalize(vectors, axis=-1)
    keras_cosine = -keras.losses.cosine_similarity(vectors, vectors)  # Keras' loss is the negated cosine
    for cosine in (tf.reduce_sum(unit * unit, axis=-1), keras_cosine):
        cosine = cosine.numpy()
        assert (cosine > 1).any() and (np.abs(cosine - 1) < 1e-6).all()
        assert np.isnan(tf.math.acos(cosine).numpy()).any()


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_margins_at_and_past_the_edge(framework, request):
    """The broken margin: NaN past 1, inf gradient at +-1. Clamping to exactly [-1, 1]: a finite value everywhere and a
    zero gradient past 1 (the clamp passes none), but still -inf at exactly +-1. The fixes: finite everywhere."""
    grad, _ = grad_of(framework, request)
    recipe = _recipe(framework)
    edge = [1.0, -1.0, ABOVE_ONE]
    value, gradient = grad(recipe.hand_written_margin, edge)
    assert math.isnan(value[2]) and not np.isfinite(gradient).any()
    value, gradient = grad(recipe.clamp_unit_margin, edge)
    assert np.isfinite(value).all() and np.isinf(gradient[:2]).all() and gradient[2] == 0.0
    for fixed in (recipe.clamp_eps_margin, recipe.no_acos_margin):
        value, gradient = grad(fixed, edge)
        assert np.isfinite(value).all() and np.isfinite(gradient).all(), fixed.__name__
        assert np.abs(gradient).max() < 1e4


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_fixes_agree_with_the_margin_away_from_the_edge(framework, request):
    grad, _ = grad_of(framework, request)
    recipe = _recipe(framework)
    inside = list(np.linspace(-0.999, 0.999, 9, dtype=np.float32))
    value, gradient = grad(recipe.hand_written_margin, inside)
    for fixed in (recipe.clamp_eps_margin, recipe.no_acos_margin, recipe.clamp_unit_margin):
        fixed_value, fixed_gradient = grad(fixed, inside)
        np.testing.assert_allclose(fixed_value, value, atol=1e-5)
        np.testing.assert_allclose(fixed_gradient, gradient, rtol=1e-3)


def test_nan_to_num_of_the_angle_hides_the_forward_nan_only(torch):
    """The other popular patch: nan_to_num(acos(c)). The angle prints finite, but acos's backward at 1.0000001 is NaN
    whatever comes from above, and at exactly 1 the angle was finite all along (0) with a -inf gradient."""
    value, gradient = torch_grad(torch, lambda c: torch.nan_to_num(torch.acos(c)), [ABOVE_ONE, 1.0, 0.5])
    assert value.tolist()[:2] == [0.0, 0.0] and math.isnan(gradient[0]) and gradient[1] == -math.inf
    assert np.isfinite(gradient[2])


# --- the contract, one seed each: the wrong fix fails where it should ---------------------------------------------

@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_clamping_to_exactly_one_goes_non_finite_like_the_broken_run(framework):
    broken = nanlab.reproduce(CAUSE, framework, "cpu", seed=0)
    clamped = nanlab.reproduce(CAUSE, framework, "cpu", seed=0, fix="clamp-unit")
    step = clamped.first_nonfinite_step
    assert broken.first_nonfinite_step is not None and step is not None
    assert math.isfinite(clamped.losses[step]) and not math.isfinite(clamped.grad_norms[step])  # the loss looks fine


# --- the rule, on reports in the vocabulary -----------------------------------------------------------------------

def _report(phase, value, max_abs, family=OpFamily.INVERSE_TRIG, op="acos", **extra):
    return NonFiniteReport(framework="torch", step=3, phase=phase, module="loss", op=op, op_family=family,
                           value=value, op_inputs=[InputStats(dtype="float32", size=8, min=-max_abs, max=max_abs,
                                                              min_abs=0.01, max_abs=max_abs)], **extra)


@pytest.mark.parametrize("phase, value, max_abs", [
    ("loss", "nan", ABOVE_ONE),       # acos(1.0000001) in an ArcFace loss
    ("forward", "nan", 1.0000002),    # asin in a layer
    ("forward", "inf", 1.0),          # atanh(1)
    ("backward", "nan", 1.0),         # acos's gradient at exactly 1 (torch names the forward op)
    ("backward", "-inf", 1.0),
])
def test_the_rule_names_an_inverse_trig_op_outside_or_on_its_edge(phase, value, max_abs):
    from nanlab.causes.domain_edge.rule import diagnose

    verdict = diagnose(_report(phase, value, max_abs))
    assert verdict is not None and verdict.cause == CAUSE and "op_inputs" in verdict.evidence
    assert ("outside its domain" if value == "nan" and phase != "backward" else "edge") in verdict.reason
    ranked = rank(_report(phase, value, max_abs))
    assert ranked[0].cause == CAUSE and [verdict.cause for verdict in ranked] == [CAUSE]


@pytest.mark.parametrize("report", [
    _report("backward", "nan", 0.999),                          # inside the domain: not an edge
    _report("forward", "nan", 1.0),                             # NaN from inputs within [-1, 1]: acosh below 1
    _report("forward", "inf", 1.5),                             # inf from an input past the edge: not atanh's edge
    _report("backward", "nan", 1.0, family=OpFamily.SQRT, op="sqrt"),                # the acos-free form's sqrt
    _report("loss", "-inf", 1.0, family=OpFamily.LOG, op="log1p"),                    # log1p(-1): a log of 0
    _report("backward", "inf", 1.0, family=OpFamily.DIV, op="reciprocal"),            # any division
    NonFiniteReport(framework="torch", step=3, phase="backward", op="acos", op_family=OpFamily.INVERSE_TRIG,
                    value="nan"),                                # no input statistics
])
def test_the_rule_stays_out_of_other_evidence(report):
    from nanlab.causes.domain_edge.rule import diagnose

    assert diagnose(report) is None


def test_log1p_at_minus_one_stays_log_of_zero():
    report = _report("loss", "-inf", 1.0, family=OpFamily.LOG, op="log1p")
    report.op_inputs[0].zeros = 0  # log1p's argument is -1, not 0: the log family's -inf is enough
    assert rank(report)[0].cause == "log-of-zero"


# --- the watch on the broken runs ---------------------------------------------------------------------------------

def _watch_broken(framework, seed):
    cause = nanlab.get_cause(CAUSE)
    seed_everything(seed, framework)
    training = cause.recipe(framework).SETTINGS["broken"](seed=seed, device="cpu")
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(training):
            get_framework(framework).loop.train(training, cause.steps)
    return raised.value.report


@pytest.mark.parametrize("framework, seed, phase, op", [
    ("torch", 0, "backward", "acos"),        # a cosine of exactly -1: acos's backward is the first non-finite op
    ("torch", 1, "backward", "acos"),
    ("tensorflow", 1, "loss", "acos"),       # a cosine of 1.0000001: acos is NaN in the loss's forward pass
    ("tensorflow", 0, "backward", "acos"),   # exactly 1: the Reciprocal inside acos's gradient, traced to acos
])
def test_the_watch_names_the_cause_of_its_broken_run(framework, seed, phase, op):
    report = _watch_broken(framework, seed)
    assert (report.cause, report.phase, report.module, report.op) == (CAUSE, phase, "loss", op), str(report)
    assert report.op_family == OpFamily.INVERSE_TRIG and len(report.samples) >= 1
    largest = max(entry.max_abs for entry in report.op_inputs)
    assert largest == (1.0 if phase == "backward" else ABOVE_ONE)
    assert report.step == nanlab.reproduce(CAUSE, framework, "cpu", seed=seed).first_nonfinite_step


# --- a program written differently: a siamese geodesic distance over a duplicated pair -----------------------------

def _geodesic_torch(torch):
    F = torch.nn.functional

    class Geodesic(torch.nn.Module):
        """A siamese embedding; the output is the great-circle distance between a pair's unit embeddings."""

        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 16))

        def forward(self, pair):
            a, b = F.normalize(self.embed(pair[:, 0]), dim=-1), F.normalize(self.embed(pair[:, 1]), dim=-1)
            return torch.acos((a * b).sum(dim=-1))

    return Geodesic


def _duplicate(cosine_with_itself, wanted):
    """The first row whose cosine with itself rounds as wanted (> 1 or == 1), or None on this machine."""
    rows = [i for i, value in enumerate(cosine_with_itself) if (value > 1 if wanted == "above" else value == 1)]
    return rows[0] if rows else None


@pytest.mark.parametrize("wanted, phase", [("above", "forward"), ("exactly", "backward")])
def test_a_geodesic_distance_over_a_duplicated_pair_is_named_in_torch(torch, wanted, phase):
    """A contrastive loss on the angle between a pair's embeddings, in the user's own loop; one pair is a record
    paired with itself (a duplicate). Its cosine rounds to 1.0000001 (NaN forward) or to 1 (-inf backward)."""
    torch.manual_seed(0)
    model = _geodesic_torch(torch)()
    pairs, same = torch.randn(16, 2, 4), (torch.rand(16) < 0.5).float()
    with torch.no_grad():
        unit = torch.nn.functional.normalize(model.embed(pairs[:, 0]), dim=-1)
        row = _duplicate((unit * unit).sum(dim=-1).tolist(), wanted)
    if row is None:
        pytest.skip(f"no row's cosine with itself rounds {wanted} 1 with this machine's reductions")
    pairs[row, 1] = pairs[row, 0]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def contrastive(distance, same):
        return (same * distance ** 2 + (1 - same) * torch.relu(1.0 - distance) ** 2).mean()

    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, contrastive) as watch:
            for _ in range(3):
                optimizer.zero_grad()
                watch.loss_fn(model(pairs), same).backward()
                optimizer.step()
    report = raised.value.report
    assert (report.cause, report.step, report.phase, report.op, report.samples) == (CAUSE, 0, phase, "acos", [row]), \
        str(report)
    assert report.verdicts == [CAUSE]


def _geodesic_keras(tf, keras):
    class Geodesic(keras.layers.Layer):
        """The great-circle distance between the unit embeddings of a pair (a siamese head)."""

        def build(self, input_shape):
            self.embed = keras.Sequential([keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(16)])

        def call(self, pair):
            a = tf.math.l2_normalize(self.embed(pair[:, 0]), axis=-1)
            b = tf.math.l2_normalize(self.embed(pair[:, 1]), axis=-1)
            return tf.math.acos(tf.reduce_sum(a * b, axis=-1, keepdims=True))

    return Geodesic


@pytest.mark.parametrize("wanted, phase", [("above", "forward"), ("exactly", "backward")])
def test_a_geodesic_distance_over_a_duplicated_pair_is_named_in_keras(tf, keras, wanted, phase):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    pairs = rng.normal(size=(16, 2, 4)).astype(np.float32)
    same = (rng.random(16) < 0.5).astype(np.float32)[:, None]
    model = keras.Sequential([keras.Input((2, 4)), _geodesic_keras(tf, keras)(name="geodesic")])
    geodesic = model.get_layer("geodesic")
    unit = tf.math.l2_normalize(geodesic.embed(pairs[:, 0]), axis=-1)
    row = _duplicate(tf.reduce_sum(unit * unit, axis=-1).numpy().tolist(), wanted)
    if row is None:
        pytest.skip(f"no row's cosine with itself rounds {wanted} 1 with this machine's reductions")
    pairs[row, 1] = pairs[row, 0]

    def contrastive(same, distance):
        return tf.reduce_mean(same * distance ** 2 + (1 - same) * tf.nn.relu(1.0 - distance) ** 2)

    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=contrastive)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        model.fit(pairs, same, batch_size=16, epochs=3, shuffle=False, verbose=0, callbacks=[nanlab.watch(model)])
    report = raised.value.report
    assert (report.cause, report.step, report.phase, report.module, report.op, report.samples) == \
        (CAUSE, 0, phase, "geodesic", "acos", [row]), str(report)
