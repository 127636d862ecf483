"""The frameworks nanlab trains with: one ``Framework`` object each, resolved once from a name or an alias.

Everything specific to one framework lives in its own folder, ``nanlab/frameworks/<name>/``:

- ``__init__.py`` declares ``FRAMEWORK`` (name, aliases, notebook folder, install hint) and imports nothing heavy;
- ``backend.py``  imports the framework: seeding, the devices it sees and what they can do, its version line;
- ``loop.py``     the ``Training`` it runs and the loop that records loss, gradient norm and the first NaN step;
- ``watch.py``    ``nanlab.watch`` for its models (the cheap per-step check), and ``replay.py``, loaded only when a
  step goes bad, the one place that may touch the framework's private APIs.

The rest of nanlab asks a ``Framework`` object and never branches on a framework's name. Adding a framework is one
new folder with these four modules, plus a ``<name>_recipe.py`` in each cause package that opts in (a cause lists
its frameworks in ``Cause.frameworks``).
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from types import ModuleType

from nanlab.errors import NanlabError


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


def framework_of(value) -> Framework | None:
    """The framework ``value`` (a model, optimizer or tensor) belongs to, or None."""
    return next((framework for framework in list_frameworks() if framework.owns(value)), None)
