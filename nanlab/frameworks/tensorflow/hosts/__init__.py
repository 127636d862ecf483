"""Adapters of nanlab.watch to Keras models trained by another backend than TensorFlow (a ``Host`` each in
``nanlab.frameworks.tensorflow``, the framework that owns Keras models): Keras 3 on JAX (``keras_jax``). Keras on
the torch backend is a torch host instead: its layers are torch modules, and the torch watch does the work.

This module imports nothing: ``Host.matches`` calls ``on_jax_backend`` for every Keras model given to nanlab.watch.
"""
import sys


def on_jax_backend(model) -> bool:
    """True for a Keras model while Keras runs on JAX (``KERAS_BACKEND=jax``). Imports nothing: ``keras`` is
    loaded (a model exists), and on the other backends JAX is never touched."""
    keras_module = sys.modules.get("keras")
    return (keras_module is not None and isinstance(model, keras_module.Model)
            and keras_module.backend.backend() == "jax")
