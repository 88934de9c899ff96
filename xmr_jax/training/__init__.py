"""Training: ``train_and_evaluate(config, workdir)``, sweeps, and evaluation of workdirs."""
from xmr_jax.training.loop import TrainingDivergedError, train_and_evaluate
from xmr_jax.training.workdirs import evaluate_ensemble, evaluate_workdir

__all__ = ["TrainingDivergedError", "evaluate_ensemble", "evaluate_workdir", "train_and_evaluate"]
