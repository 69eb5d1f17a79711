"""t1: reasoning RL (the T1 recipe) and inference-scaling measurement."""

__version__ = "0.1.0"
