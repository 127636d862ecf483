"""attention-logit-growth: the numbers its notebooks state (torch 2.13 / TF 2.21 / Keras 3 on CPU), its rule on
built evidence beside fp16-overflow's, and nanlab.watch naming it on the recipe and on a program written
differently (a four-head attention written with ``einsum`` in the user's own loop; Keras' MultiHeadAttention in
``fit`` under mixed_float16)."""
import math

import numpy as np
import pytest

import nanlab
from nanlab.causes.attention_logit_growth import FLOAT16_MAX, QK_LR_MULTIPLIER, SOFT_CAP
from nanlab.diagnosis import DIRECT, rank
from nanlab.frameworks import get_framework
from nanlab.report import NonFiniteReport
from nanlab.seeding import seed_everything
from nanlab.watching.conclude import conclude
from nanlab.watching.vocabulary import InputStats, OpFamily

CAUSE = nanlab.get_cause("attention-logit-growth")
FRAMEWORKS = ("torch", "tensorflow")


def training_of(framework, setting="broken", seed=0):
    seed_everything(seed, framework)
    return CAUSE.recipe(framework).SETTINGS[setting](seed=seed, device="cpu")


def stats(max_abs: float, dtype: str = "float16") -> InputStats:
    return InputStats(dtype, size=512, negatives=200, min=-max_abs, max=max_abs, min_abs=0.01, max_abs=max_abs)


# -- the cause's facts and settings -------------------------------------------------------------------------------
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_recipe_settings_are_the_broken_setting_and_the_fixes(framework):
    assert list(CAUSE.recipe(framework).SETTINGS) == ["broken", *CAUSE.fix_ids]


def test_the_wrong_fix_is_the_soft_cap_and_it_stays_finite():
    assert [(fix.id, fix.still_nonfinite) for fix in CAUSE.fixes if fix.hides_problem] == [("soft-cap", False)]
    assert CAUSE.number == 20 and CAUSE.frameworks == FRAMEWORKS and QK_LR_MULTIPLIER == 100
    assert CAUSE.notebooks == {"torch": "notebooks/pytorch/20-attention-logit-growth.ipynb",
                               "tensorflow": "notebooks/tensorflow/20-attention-logit-growth.ipynb"}


# -- the mechanism ------------------------------------------------------------------------------------------------
def test_a_float16_logit_past_65504_is_inf_and_only_plus_inf_makes_the_softmax_nan(torch):
    q = torch.full((1, 32), 60.0, dtype=torch.float16)
    logit = (q @ q.T) / math.sqrt(32)  # 32 * 3600 / 5.66 = 20365: fine; the product itself passes 65504 first
    assert torch.isinf(q @ q.T).all() and math.isfinite(logit.item()) is False
    assert math.isfinite(((q.float() @ q.float().T) / math.sqrt(32)).item())  # float32 holds it
    row = torch.tensor([[1.0, float("inf"), 2.0]], dtype=torch.float16)
    assert torch.isnan(torch.softmax(row, -1)).all()  # inf - inf
    masked = torch.tensor([[1.0, float("-inf"), 2.0]], dtype=torch.float16)
    assert torch.isfinite(torch.softmax(masked, -1)).all()  # -inf is a mask: exp(-inf) = 0


def test_the_logits_maximum_grows_by_orders_of_magnitude_before_the_nan(torch):
    """The recipe's torch run: the largest attention logit on a fixed held-out batch, step by step, up to the
    NaN (at the step the plain run's NaN is)."""
    training = training_of("torch")
    probe = torch.as_tensor(nanlab.causes.attention_logit_growth.make_data(0).x_eval[:64])
    maxima = []
    loop = get_framework("torch").loop
    for _ in range(CAUSE.steps):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
            logits = training.model.attention.logits(training.model.embed(probe))
        maxima.append(logits.float().abs().max().item())
        if loop.train(training, 1).first_nonfinite_step is not None:
            break
    finite = [value for value in maxima if math.isfinite(value)]
    assert len(maxima) < CAUSE.steps and finite[0] < 10 and max(finite) > 1000, maxima
    assert len(maxima) - 1 == nanlab.reproduce(CAUSE, "torch", "cpu", seed=0).first_nonfinite_step


def test_the_soft_cap_is_finite_but_the_product_under_it_still_overflows(torch):
    training = training_of("torch", "soft-cap")
    history = get_framework("torch").loop.train(training, CAUSE.steps)
    assert history.first_nonfinite_step is None and not CAUSE.judge_learning(history.losses, training.evaluate(
        training.model))
    x, _ = next(training.batches)
    attention = training.model.attention
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        h = training.model.embed(x)
        product = attention.query(h) @ attention.key(h).transpose(-1, -2)
        capped = attention.logits(h)
    assert not torch.isfinite(product).all() and capped.abs().max().item() <= SOFT_CAP


def test_keras_mixed_float16_matmul_overflows_and_a_multiplier_is_a_faster_rate(tf, keras):
    q = tf.fill((1, 32), tf.constant(60.0, tf.float16))
    assert np.isinf(tf.matmul(q, q, transpose_b=True).numpy()).all()
    layer = CAUSE.recipe("tensorflow").SelfAttention(32, multiplier=QK_LR_MULTIPLIER, dtype="mixed_float16")
    layer.build((None, 16, 32))
    assert (layer.compute_dtype, layer.variable_dtype) == ("float16", "float32")
    limit = math.sqrt(3.0 / 32) / QK_LR_MULTIPLIER  # VarianceScaling(1 / m**2), uniform: a weight m times smaller
    assert np.abs(layer.query_kernel.numpy()).max() <= limit * 1.0001


# -- the rule, on the evidence the watches fill -------------------------------------------------------------------
MATMUL = dict(phase="forward", module="attention", module_kind="SelfAttention", op="matmul",
              op_family=OpFamily.MATMUL, dtype="float16", dtype_max=FLOAT16_MAX, max_abs=8.9e4, value="inf",
              op_inputs=[stats(109.0), stats(92.0)])


@pytest.mark.parametrize("fields", [
    MATMUL,
    dict(MATMUL, module="attention", op="batchmatmulv2", value="-inf"),  # Keras
    dict(MATMUL, module="blocks.3.self_attn", module_kind="Attention", op="einsum", max_abs=None),
    # a fused attention function (scaled_dot_product_attention) whose inside overflowed: NaN out of finite inputs
    dict(MATMUL, module="encoder.layers.0.mha", module_kind="Block", op="scaled_dot_product_attention",
         op_family=OpFamily.SOFTMAX, value="nan", max_abs=None, op_inputs=[stats(300.0), stats(280.0), stats(3.0)]),
])
def test_the_rule_names_an_attention_product_that_overflowed(fields):
    report = conclude(NonFiniteReport("torch", step=9, **fields))
    assert report.cause == CAUSE.id, report.cause_reason
    assert DIRECT < rank(report)[0].specificity < DIRECT + 0.15
    assert report.runner_up in (None, "fp16-overflow", "masked-attention")  # a fused NaN: both read it


def test_the_reason_names_the_queries_and_keys_and_the_fix():
    report = conclude(NonFiniteReport("torch", step=9, **MATMUL))
    assert (report.cause, report.runner_up) == (CAUSE.id, "fp16-overflow")
    assert "109 and 92" in report.cause_reason and "QK-layernorm" in report.cause_reason


@pytest.mark.parametrize("fields, cause", [
    (dict(MATMUL, module="hidden", module_kind="Linear", op="linear"), "fp16-overflow"),  # not an attention
    (dict(MATMUL, module=None, module_kind=None), "fp16-overflow"),
    (dict(MATMUL, dtype="bfloat16", dtype_max=None, max_abs=None, value="nan"), None),  # bfloat16 holds it
    (dict(MATMUL, dtype="float32", dtype_max=None, max_abs=None), None),
    (dict(MATMUL, phase="backward"), "fp16-overflow"),
    (dict(MATMUL, op_inputs=[stats(109.0), InputStats("float16", size=4, nonfinite=1, max_abs=2.0)]),
     "fp16-overflow"),  # the queries were already non-finite: something upstream
    (dict(MATMUL, op="softmax", op_family=OpFamily.SOFTMAX, value="nan", max_abs=None,
          op_inputs=[InputStats("float16", size=4, nonfinite=1, max_abs=2.0)]), None),  # a softmax fed inf
    (dict(MATMUL, op="exp", op_family=OpFamily.EXP), "fp16-overflow"),
])
def test_the_rule_leaves_other_evidence_to_other_rules(fields, cause):
    report = conclude(NonFiniteReport("torch", step=9, **fields))
    assert CAUSE.id not in report.verdicts, report.cause_reason
    if cause is not None:
        assert report.cause == cause, report.cause_reason


# -- nanlab.watch, end to end ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("framework, op", [("torch", "matmul"), ("tensorflow", "batchmatmulv2")])
def test_the_watch_names_the_cause_of_its_broken_run(framework, op):
    training = training_of(framework)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(training):
            get_framework(framework).loop.train(training, CAUSE.steps)
    report = raised.value.report
    assert (report.cause, report.runner_up) == (CAUSE.id, "fp16-overflow"), str(report)
    assert (report.phase, report.module, report.op, report.op_family, report.dtype) == (
        "forward", "attention", op, OpFamily.MATMUL, "float16")
    assert 0 < report.step < 25 and report.value in ("inf", "-inf")
    assert all(math.isfinite(entry.max_abs) and entry.max_abs < 1000 for entry in report.op_inputs)
    assert report.step == nanlab.reproduce(CAUSE, framework, "cpu", seed=0).first_nonfinite_step


def test_a_multi_head_attention_with_einsum_in_a_user_loop_torch(torch):
    """Not the recipe: four heads written with ``einsum`` in a module named ``attn``, its projections grown, AdamW at
    0.05 everywhere, float16 autocast in the user's own loop. (``F.scaled_dot_product_attention`` on the CPU
    computes its softmax in float32: the same weights never overflow there, measured.)"""
    nn = torch.nn

    class Attn(nn.Module):
        def __init__(self, dim=32, heads=4):
            super().__init__()
            self.qkv, self.heads = nn.Linear(dim, 3 * dim), heads

        def forward(self, h):
            b, t, d = h.shape
            q, k, v = (part.reshape(b, t, self.heads, -1).transpose(1, 2) for part in self.qkv(h).chunk(3, -1))
            logits = torch.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(d // self.heads)
            return torch.einsum("bhqk,bhkd->bhqd", logits.softmax(-1), v).transpose(1, 2).reshape(b, t, d)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.attn, self.head = nn.Linear(17, 32), Attn(), nn.Linear(32, 4)

        def forward(self, x):
            return self.head(self.attn(self.embed(x)).mean(1))

    data = nanlab.causes.attention_logit_growth.make_data(1)
    x, y = torch.tensor(data.x_train[:64]), torch.tensor(data.y_train[:64])
    torch.manual_seed(1)
    model = Net()
    with torch.no_grad():
        model.attn.qkv.weight[:64] *= 200  # queries and keys that have grown
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    with pytest.raises(nanlab.NonFiniteError) as raised:
        with nanlab.watch(model, optimizer, nn.functional.cross_entropy) as watch:
            for _ in range(40):
                optimizer.zero_grad()
                with torch.autocast("cpu", dtype=torch.float16):
                    loss = watch.loss_fn(model(x).float(), y)
                loss.backward()
                optimizer.step()
    report = raised.value.report
    assert (report.cause, report.phase, report.dtype) == (CAUSE.id, "forward", "float16"), str(report)
    assert "attn" in report.module


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_fixes_keep_the_logits_small(framework):
    """QK-layernorm bounds the logits; the lower rate never lets them grow past a few hundred."""
    for setting in ("qk-layernorm", "lower-rate-warmup"):
        training = training_of(framework, setting)
        history = get_framework(framework).loop.train(training, CAUSE.steps)
        assert history.first_nonfinite_step is None, setting
        assert CAUSE.judge_learning(history.losses, training.evaluate(training.model)), setting


def test_a_keras_multi_head_attention_under_mixed_float16_in_fit_tensorflow(tf, keras):
    """Not the recipe: Keras' own ``MultiHeadAttention`` layer (its query and key projections grown) in a functional
    model trained with ``fit`` under the ``mixed_float16`` policy, Adam at 0.01 and ``callbacks=[nanlab.watch(model)]``
    as a Keras user writes it."""
    data = nanlab.causes.attention_logit_growth.make_data(1)
    x, y = data.x_train[:128].astype("float32"), data.y_train[:128]
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(1)
        tokens = keras.Input(x.shape[1:])
        hidden = keras.layers.Dense(32)(tokens)
        attended = keras.layers.MultiHeadAttention(num_heads=4, key_dim=8, name="self_attention")(hidden, hidden)
        pooled = keras.layers.GlobalAveragePooling1D()(attended)
        logits = keras.layers.Dense(4, dtype="float32")(pooled)
        model = keras.Model(tokens, logits)
        attention = model.get_layer("self_attention")
        for projection in (attention.query_dense, attention.key_dense):
            projection.kernel.assign(projection.kernel * 200.0)  # queries and keys that have grown
        model.compile(optimizer=keras.optimizers.Adam(0.01),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        with pytest.raises(nanlab.NonFiniteError) as raised:
            model.fit(x, y, batch_size=32, epochs=10, shuffle=False, verbose=0, callbacks=[nanlab.watch(model)])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    report = raised.value.report
    assert (report.cause, report.phase, report.dtype) == (CAUSE.id, "forward", "float16"), str(report)
    assert "attention" in report.module and report.op_family == OpFamily.MATMUL, str(report)
