"""TensorFlow/Keras: declared here without importing TensorFlow; ``backend``, ``loop``, ``watch`` and ``replay`` do."""
from nanlab.frameworks import Framework, Host

FRAMEWORK = Framework(
    name="tensorflow",
    title="TensorFlow/Keras",
    aliases=("tf", "keras"),
    notebook_folder="tensorflow",
    install_hint="pip install 'nanlab[tensorflow]'",
    root_modules=("tensorflow", "keras", "tf_keras"),
    watchable="a keras.Model, a tf.Module or a list of tf.Variables",
    package=__name__,
    hosts=(Host("Keras 3 on the JAX backend", "keras.Model", f"{__name__}.hosts.keras_jax",
                accepts=f"{__name__}.hosts.on_jax_backend"),),
)
