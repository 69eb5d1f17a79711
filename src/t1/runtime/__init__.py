"""What every stage's run shares: the optimizer and schedule (:mod:`optim`), the device and precision
(:mod:`device`), and the run directory — checkpoints, metrics, RNG state, timers (:mod:`run`)."""
