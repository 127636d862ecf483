"""PyTorch: declared here without importing torch; ``backend``, ``loop``, ``watch`` and ``replay`` do."""
from nanlab.frameworks import Framework, Host

FRAMEWORK = Framework(
    name="torch",
    title="PyTorch",
    aliases=("pytorch",),
    notebook_folder="pytorch",
    # pinned: a looser range makes pip fetch the newest CUDA build (several GB) onto a CPU machine
    install_hint="pip install 'nanlab[torch]'",
    root_modules=("torch",),
    watchable="a torch.nn.Module",
    package=__name__,
    hosts=(
        Host("transformers", "transformers.Trainer", f"{__name__}.hosts.transformers"),
        Host("lightning", "lightning.Trainer", f"{__name__}.hosts.lightning"),
        Host("Keras 3 on the torch backend", "keras.Model", f"{__name__}.hosts.keras",
             accepts=f"{__name__}.hosts.keras.on_torch_backend"),
    ),
)
