"""`echelon chaos`: kill components of a real multi-process stack under load and check the invariants."""

from echelon.chaos.cluster import Tuning
from echelon.chaos.runner import ChaosConfig, run_chaos

__all__ = ["ChaosConfig", "Tuning", "run_chaos"]
