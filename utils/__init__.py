"""Training utilities: meters, the learning-rate schedule, checkpoints, logs, distributed helpers."""
