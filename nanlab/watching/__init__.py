"""The watch core, framework-free: the policy and history (``policy``), the state machine every framework's watch
runs (``core``), the evidence vocabulary (``vocabulary``) and the conclusion (``conclude``)."""
from nanlab.watching.policy import ON_NONFINITE, WatchHistory, WatchPolicy

__all__ = ["ON_NONFINITE", "WatchHistory", "WatchPolicy"]
