"""nanlab: reproduce, diagnose and fix the well-known causes of NaN/Inf loss, in PyTorch and TensorFlow/Keras.

``import nanlab`` imports neither framework; each is loaded when a run first needs it.
"""
from nanlab.errors import NanlabError
from nanlab.registry import Cause, Fix, get_cause, list_causes
from nanlab.reproduce import ContractRow, check_contract, reproduce, verify
from nanlab.run import Run

__version__ = "0.1.0"

__all__ = ["Cause", "ContractRow", "Fix", "NanlabError", "Run", "check_contract", "get_cause", "list_causes",
           "reproduce", "verify", "__version__"]
