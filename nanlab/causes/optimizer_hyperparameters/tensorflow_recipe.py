"""Optimizer hyperparameters in TensorFlow/Keras: AdamW with weight_decay = 1000, its fixes, and the momentum and
schedule variants (``momentum_one``, ``warmup_without_end_training``: shown in the notebook, not part of the
contract's settings). Keras refuses ``SGD(momentum=1.05)`` (its momentum must lie in [0, 1]); it accepts 1.0."""
from nanlab.causes.optimizer_hyperparameters import (BATCH_SIZE, BROKEN_WEIGHT_DECAY, CAUSE, EDGE_MOMENTUM,
                                                     HIDDEN_UNITS, LR, MAX_GRAD_NORM, NUM_CLASSES, NUM_FEATURES,
                                                     PEAK_LR, SANE_MOMENTUM, SANE_WEIGHT_DECAY, SGD_LR,
                                                     WARMUP_STEPS, make_data)
from nanlab.frameworks.tensorflow.loop import Training, accuracy, keras, minibatches


def make_model() -> keras.Model:
    return keras.Sequential([
        keras.Input((NUM_FEATURES,)),
        keras.layers.Dense(HIDDEN_UNITS, activation=keras.layers.LeakyReLU(0.1), name="hidden_1"),
        keras.layers.Dense(HIDDEN_UNITS, activation=keras.layers.LeakyReLU(0.1), name="hidden_2"),
        keras.layers.Dense(NUM_CLASSES, name="logits"),
    ], name="mlp")


def build_training(seed: int, optimizer: keras.optimizers.Optimizer) -> Training:
    data = make_data(seed)
    return Training(
        model=make_model(),
        optimizer=optimizer,
        loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed),
        evaluate=accuracy(data.x_eval, data.y_eval),
    )


def broken(seed: int, device: str) -> Training:
    # each step: w <- w - w * 1000 * LR = -2 w (Keras' decoupled weight decay), then the Adam step
    return build_training(seed, keras.optimizers.AdamW(learning_rate=LR, weight_decay=BROKEN_WEIGHT_DECAY))


def sane_weight_decay(seed: int, device: str) -> Training:
    return build_training(seed, keras.optimizers.AdamW(learning_rate=LR, weight_decay=SANE_WEIGHT_DECAY))


def clip_grad_norm(seed: int, device: str) -> Training:
    # Keras clips the gradients, then applies the weight decay to the weights: the decay is not clipped
    return build_training(seed, keras.optimizers.AdamW(learning_rate=LR, weight_decay=BROKEN_WEIGHT_DECAY,
                                                       global_clipnorm=MAX_GRAD_NORM))


def momentum_one(seed: int, device: str) -> Training:
    """Momentum exactly 1 (Keras' largest): the velocity is the sum of every past gradient."""
    return build_training(seed, keras.optimizers.SGD(learning_rate=SGD_LR, momentum=EDGE_MOMENTUM))


def momentum_below_one(seed: int, device: str) -> Training:
    return build_training(seed, keras.optimizers.SGD(learning_rate=SGD_LR, momentum=SANE_MOMENTUM))


class WarmupWithoutEnd(keras.optimizers.schedules.LearningRateSchedule):
    """A hand-written linear warmup whose ``min(1.0, ...)`` was forgotten: the rate keeps growing after it."""

    def __init__(self, peak: float, warmup_steps: int):
        self.peak, self.warmup_steps = peak, warmup_steps

    def __call__(self, step):
        return self.peak * (keras.ops.cast(step, "float32") + 1.0) / self.warmup_steps

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps}


def warmup_without_end_training(seed: int, device: str) -> Training:
    """The schedule variant: SGD (momentum 0.9) whose rate rises by PEAK_LR / 10 every step, forever."""
    return build_training(seed, keras.optimizers.SGD(learning_rate=WarmupWithoutEnd(PEAK_LR, WARMUP_STEPS),
                                                     momentum=SANE_MOMENTUM))


def decaying_schedule(seed: int, device: str) -> Training:
    """Keras' own schedule: a linear warmup that ends at PEAK_LR, then cosine decay to 0."""
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=PEAK_LR / WARMUP_STEPS, warmup_target=PEAK_LR, warmup_steps=WARMUP_STEPS,
        decay_steps=CAUSE.steps - WARMUP_STEPS)
    return build_training(seed, keras.optimizers.SGD(learning_rate=schedule, momentum=SANE_MOMENTUM))


SETTINGS = {"broken": broken, "sane-weight-decay": sane_weight_decay, "momentum-below-one": momentum_below_one,
            "decaying-schedule": decaying_schedule, "clip-grad-norm": clip_grad_norm}
