"""Exploding RNN gradients in TensorFlow/Keras: the broken setting and its fixes."""
from nanlab.causes.exploding_rnn_gradients import (BATCH_SIZE, CLIP_VALUE, GRU_LR, HIDDEN_UNITS, LR,
                                                   MAX_GRAD_NORM, SEQ_LEN, SPECTRAL_RADIUS, make_data,
                                                   recurrent_matrix)
from nanlab.frameworks.tensorflow.loop import (CompiledForward, Training, accuracy, gradient_norm, keras,
                                              minibatches, tf)


def sequence_classifier(recurrent: keras.layers.Layer, seq_len: int | None = SEQ_LEN) -> keras.Model:
    """A recurrent layer read out at the last time step; ``seq_len=None`` reads sequences of any length."""
    return keras.Sequential([keras.Input((seq_len, 1)), recurrent, keras.layers.Dense(2, name="readout")],
                            name="rnn_classifier")


def vanilla_rnn(seq_len: int | None = SEQ_LEN, spectral_radius: float = SPECTRAL_RADIUS) -> keras.Model:
    recurrent = keras.initializers.Constant(recurrent_matrix(spectral_radius))
    return sequence_classifier(
        keras.layers.SimpleRNN(HIDDEN_UNITS, activation="relu", recurrent_initializer=recurrent, name="recurrent"),
        seq_len)


def build_training(model: keras.Model, seed: int, optimizer: keras.optimizers.Optimizer) -> Training:
    data = make_data(seed)
    return Training(
        model=model,
        optimizer=optimizer,
        loss_fn=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        batches=minibatches(data.x_train, data.y_train, BATCH_SIZE, seed),
        evaluate=accuracy(data.x_eval, data.y_eval),
    )


def broken(seed: int, device: str) -> Training:
    model = CompiledForward(vanilla_rnn())  # recurrent weights 1.25 * I
    return build_training(model, seed, keras.optimizers.SGD(learning_rate=LR))


def clip_grad_norm(seed: int, device: str) -> Training:
    optimizer = keras.optimizers.SGD(learning_rate=LR, global_clipnorm=MAX_GRAD_NORM)
    return build_training(CompiledForward(vanilla_rnn()), seed, optimizer)


def gru(seed: int, device: str) -> Training:
    model = CompiledForward(sequence_classifier(keras.layers.GRU(HIDDEN_UNITS, name="recurrent")))
    return build_training(model, seed, keras.optimizers.SGD(learning_rate=GRU_LR))


SETTINGS = {"broken": broken, "clip-grad-norm": clip_grad_norm, "gru": gru}


def clip_grad_value(seed: int, device: str) -> Training:
    """The same RNN with every gradient component clamped to [-CLIP_VALUE, CLIP_VALUE]: bounded, but turned."""
    optimizer = keras.optimizers.SGD(learning_rate=LR, clipvalue=CLIP_VALUE)
    return build_training(CompiledForward(vanilla_rnn()), seed, optimizer)


def batch_gradients(model: keras.Model, x: tf.Tensor, y: tf.Tensor) -> list[tf.Tensor]:
    """The gradients of the loss on one batch ``(x, y)``; no step is taken."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    return tape.gradient(loss, model.trainable_variables)


def gradients_at_init(seq_len: int, seed: int, spectral_radius: float = SPECTRAL_RADIUS) -> list[tf.Tensor]:
    """The gradients of a fresh vanilla RNN on one batch of sequences ``seq_len`` long (no step taken)."""
    keras.utils.set_random_seed(seed)
    model = vanilla_rnn(seq_len, spectral_radius)
    data = make_data(seed, seq_len)
    return batch_gradients(model, data.x_train[:BATCH_SIZE], data.y_train[:BATCH_SIZE])


def gradient_norm_at_init(seq_len: int, seed: int = 0, spectral_radius: float = SPECTRAL_RADIUS) -> float:
    """The global gradient norm of a fresh vanilla RNN on sequences ``seq_len`` long."""
    return float(gradient_norm(gradients_at_init(seq_len, seed, spectral_radius)).numpy())


def gradient_norms_at_init(seq_lens: list[int], seed: int = 0,
                           spectral_radius: float = SPECTRAL_RADIUS) -> list[float]:
    """The global gradient norm of a fresh vanilla RNN (no step taken) on sequences of each length in ``seq_lens``.

    One network reads every length, so its forward and backward passes are traced into one ``tf.function`` once
    and reused; eagerly, each time step of each length would run op by op (about 0.1 s a length, 0.3 s at 400).
    """
    keras.utils.set_random_seed(seed)
    model = vanilla_rnn(seq_len=None, spectral_radius=spectral_radius)  # same weights as vanilla_rnn(seq_len)
    sequences = (tf.TensorSpec((None, None, 1), tf.float32), tf.TensorSpec((None,), tf.int64))
    compiled_gradients = tf.function(lambda x, y: batch_gradients(model, x, y), input_signature=sequences)
    norms = []
    for seq_len in seq_lens:
        data = make_data(seed, seq_len)
        gradients = compiled_gradients(data.x_train[:BATCH_SIZE], data.y_train[:BATCH_SIZE])
        norms.append(float(gradient_norm(gradients).numpy()))
    return norms
