"""Tasks: prompts, answer extraction and rewards (Countdown, math, multiple choice)."""
