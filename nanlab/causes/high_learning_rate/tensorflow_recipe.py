"""High learning rate in TensorFlow/Keras: the broken setting and its fixes."""
from nanlab.causes.high_learning_rate import (BATCH_SIZE, BROKEN_LR, CAUSE, HIDDEN_UNITS, MAX_GRAD_NORM,
                                              NUM_CLASSES, NUM_FEATURES, SANE_LR, WARMUP_STEPS, make_data)
from nanlab.frameworks.tensorflow.loop import Training, accuracy, keras, lr_range_test, minibatches


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
    return build_training(seed, keras.optimizers.SGD(learning_rate=BROKEN_LR))


def lower_lr(seed: int, device: str) -> Training:
    return build_training(seed, keras.optimizers.SGD(learning_rate=SANE_LR))


def clip_grad_norm(seed: int, device: str) -> Training:
    return build_training(seed, keras.optimizers.SGD(learning_rate=BROKEN_LR, global_clipnorm=MAX_GRAD_NORM))


def lr_finder(seed: int, device: str) -> Training:
    training = build_training(seed, keras.optimizers.SGD(learning_rate=BROKEN_LR))
    found_lr = lr_range_test(training)  # restores the weights it trained on
    training.optimizer.learning_rate.assign(found_lr)
    return training


def warmup_to_broken_lr(seed: int, device: str) -> Training:
    """Not a fix (the notebook's warmup section): the broken rate, reached by a linear warmup, then cosine decay."""
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=BROKEN_LR / WARMUP_STEPS, warmup_target=BROKEN_LR, warmup_steps=WARMUP_STEPS,
        decay_steps=CAUSE.steps - WARMUP_STEPS)
    return build_training(seed, keras.optimizers.SGD(learning_rate=schedule))


SETTINGS = {"broken": broken, "lower-lr": lower_lr, "clip-grad-norm": clip_grad_norm, "lr-finder": lr_finder}
