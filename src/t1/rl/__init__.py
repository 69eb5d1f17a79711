"""Reinforcement learning: the pure algorithm (algo), the dynamic anchor, rewards and the trainer."""
