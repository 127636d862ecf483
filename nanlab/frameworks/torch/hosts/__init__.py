"""Adapters of the torch watch to trainers built on torch (a ``Host`` each in ``nanlab.frameworks.torch``)."""
