"""Training: the loop, evaluation, checkpoints, distributed helpers (no Ray, no MLflow)."""
