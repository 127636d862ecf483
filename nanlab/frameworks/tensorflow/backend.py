"""TensorFlow/Keras imported the quiet way, and its seeding, devices and version behind the backend names.

Import ``tf`` and ``keras`` from here: the environment is set before TensorFlow loads, so that its C++ info logs
stay off stderr and oneDNN's reordered float sums do not make CPU results depend on the processor.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

TF_DEVICES = {"cpu": "/CPU:0", "cuda": "/GPU:0"}


def seed(value: int) -> None:
    keras.utils.set_random_seed(value)  # Python, NumPy and the TensorFlow backend


def has_gpu() -> bool:
    return bool(tf.config.list_physical_devices("GPU"))


def on_device(device: str):
    """The TensorFlow device scope for ``"cpu"`` or ``"cuda"``."""
    return tf.device(TF_DEVICES[device])


def version() -> str:
    return f"tensorflow {tf.__version__}, keras {keras.__version__}"


def capabilities(device: str) -> dict[str, bool]:
    """What ``device`` can run: float16/bfloat16 (Keras mixed policies) and XLA (``jit_compile=True``)."""
    return {"float16": True, "bfloat16": True, "xla": True}


def build_info() -> dict[str, str | None]:
    """The CUDA and cuDNN versions this TensorFlow was built with (None in a CPU-only build)."""
    info = tf.sysconfig.get_build_info()
    cuda = info.get("cuda_version") if info.get("is_cuda_build") else None
    return {"cuda": cuda, "cudnn": info.get("cudnn_version") if cuda else None}


def weights(model) -> list:
    """The model's weights as NumPy arrays (copies): a ``keras.Model``'s, a ``tf.Module``'s or a variable list's."""
    variables = model if isinstance(model, (list, tuple)) else getattr(model, "weights", None) or model.variables
    return [variable.numpy().copy() for variable in variables]


def is_batch_stream(value) -> bool:
    """A ``tf.data.Dataset``, which ``nanlab.scan`` reads batch by batch."""
    return isinstance(value, tf.data.Dataset)


def stream_length(stream) -> int | None:
    """How many batches ``stream`` yields, when its cardinality is known."""
    cardinality = int(stream.cardinality())
    return cardinality if cardinality >= 0 else None
