"""Training infrastructure: errors, meters, the learning-rate schedule, distributed helpers, checkpoints,
logs and stop signals."""
