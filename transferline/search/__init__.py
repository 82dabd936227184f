"""Hyperparameter search: the search space and the Optuna study core."""
