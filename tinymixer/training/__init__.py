"""Training: optimisers and schedules, the step and the loop, augmentation, averaging, checkpoints, evaluation,
data parallelism."""
