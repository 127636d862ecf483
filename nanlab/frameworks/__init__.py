"""The frameworks nanlab trains with: one ``Framework`` object each, resolved once from a name or an alias.

Everything specific to one framework lives in its own folder, ``nanlab/frameworks/<name>/``:

- ``__init__.py`` declares ``FRAMEWORK`` (name, aliases, notebook folder, install hint) and imports nothing heavy;
- ``backend.py``  imports the framework: seeding, the devices it sees and what they can do, its version line;
- ``loop.py``     the ``Training`` it runs and the loop that records loss, gradient norm and the first NaN step;
- ``watch.py``    ``nanlab.watch`` for its models (the cheap per-step check), and ``replay.py``, loaded only when a
  step goes bad; ``private.py`` the one guarded home of the framework's private APIs;
- ``hosts/``      adapters of its watch to trainers built on it (a ``Host`` each: the Transformers ``Trainer``,
  Lightning, Keras 3 on the torch backend …), loaded only when ``nanlab.watch`` is given such an object. Keras 3 on
  the JAX backend is a host of TensorFlow/Keras, the framework that owns Keras models: JAX is a Keras backend to
  nanlab, not a framework with loops and recipes of its own.

The rest of nanlab asks a ``Framework`` object and never branches on a framework's name. Adding a framework is one
new folder with these four modules, plus a ``<name>_recipe.py`` in each cause package that opts in (a cause lists
its frameworks in ``Cause.frameworks``).
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
from dataclasses import dataclass
from types import ModuleType

from nanlab.errors import NanlabError


@dataclass(frozen=True)
class Host:
    """A trainer or model type built on a framework whose training loop nanlab does not write (the Transformers
    ``Trainer``, a Lightning ``Trainer``): ``nanlab.watch(obj)`` hands such an object to ``adapter``'s ``watch``.

    ``cls`` is the class's import path (``"transformers.Trainer"``); it is only looked up when its top-level module
    is already imported (an object of the class cannot exist otherwise), so recognising hosts imports nothing.
    ``accepts``, when set, is the path of a predicate the object must also satisfy (e.g. Keras on the torch backend).
    """

    name: str
    cls: str
    adapter: str
    accepts: str | None = None

    def matches(self, value) -> bool:
        root = self.cls.split(".")[0]
        if root not in sys.modules:
            return False
        module_name, _, class_name = self.cls.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            return False
        if not isinstance(value, cls):
            return False
        return self.accepts is None or _resolve(self.accepts)(value)

    def module(self) -> ModuleType:
        return importlib.import_module(self.adapter)


def _resolve(path: str):
    module_name, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


@dataclass(frozen=True)
class Framework:
    """One deep-learning framework as nanlab sees it; the heavy modules load on first use.

    ``name`` is the id used everywhere (``Run.framework``, recipe module ``<name>_recipe``); ``aliases`` are other
    spellings users type; ``root_modules`` are the top-level Python modules whose objects belong to it (how
    ``nanlab.watch`` tells a torch model from a Keras one without importing either); ``watchable`` says in words
    what its watch accepts.
    """

    name: str
    title: str
    aliases: tuple[str, ...]
    notebook_folder: str
    install_hint: str
    root_modules: tuple[str, ...]
    watchable: str
    package: str
    hosts: tuple[Host, ...] = ()

    def module(self, name: str) -> ModuleType:
        """``backend``, ``loop``, ``watch`` or ``replay`` of this framework; a missing framework is a one-line error."""
        try:
            return importlib.import_module(f"{self.package}.{name}")
        except ModuleNotFoundError as missing:
            if missing.name not in self.root_modules:
                raise
            raise NanlabError(f"{self.title} is not installed; install it with: {self.install_hint}") from None

    @property
    def backend(self) -> ModuleType:
        return self.module("backend")

    @property
    def loop(self) -> ModuleType:
        return self.module("loop")

    def owns(self, value) -> bool:
        """True when ``value`` is an object of this framework (a model, an optimizer, a tensor)."""
        return any(cls.__module__.split(".")[0] in self.root_modules for cls in type(value).__mro__)

    def notebook(self, number: int, cause_id: str) -> str:
        """The path of a cause's notebook for this framework, relative to the repository root."""
        return f"notebooks/{self.notebook_folder}/{number:02d}-{cause_id}.ipynb"


def _discover() -> dict[str, Framework]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        framework = getattr(importlib.import_module(f"{__name__}.{info.name}"), "FRAMEWORK", None)
        if isinstance(framework, Framework):
            found[framework.name] = framework
    order = ("torch", "tensorflow")  # the two the project began with come first; later ones alphabetically
    return dict(sorted(found.items(), key=lambda item: (order.index(item[0]) if item[0] in order else len(order),
                                                        item[0])))


_FRAMEWORKS: dict[str, Framework] | None = None


def list_frameworks() -> list[Framework]:
    """Every framework nanlab knows (installed or not)."""
    global _FRAMEWORKS
    if _FRAMEWORKS is None:
        _FRAMEWORKS = _discover()
    return list(_FRAMEWORKS.values())


def framework_names() -> tuple[str, ...]:
    return tuple(framework.name for framework in list_frameworks())


def get_framework(framework: str | Framework) -> Framework:
    """Resolve a name or alias (``pytorch``, ``tf``, ``keras`` …) to its ``Framework``, or say what is valid."""
    if isinstance(framework, Framework):
        return framework
    wanted = str(framework).lower()
    for candidate in list_frameworks():
        if wanted == candidate.name or wanted in candidate.aliases:
            return candidate
    raise NanlabError(f"unknown framework {framework!r}; valid frameworks: {', '.join(framework_names())}")


def host_of(value) -> tuple[Framework, Host] | None:
    """The framework and host adapter for a trainer-like ``value`` (a Transformers or Lightning ``Trainer`` …)."""
    return next(((framework, host) for framework in list_frameworks() for host in framework.hosts
                 if host.matches(value)), None)


def framework_of(value) -> Framework | None:
    """The framework ``value`` (a model, optimizer or tensor) belongs to, or None."""
    return next((framework for framework in list_frameworks() if framework.owns(value)), None)
