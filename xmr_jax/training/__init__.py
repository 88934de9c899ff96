"""Training: ``train_and_evaluate(config, workdir)`` and ``evaluate_workdir(config, workdir)``."""
from xmr_jax.training.loop import (TrainingDivergedError, evaluate_ensemble, evaluate_workdir,
                                   train_and_evaluate)

__all__ = ["TrainingDivergedError", "evaluate_ensemble", "evaluate_workdir", "train_and_evaluate"]
