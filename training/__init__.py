"""Scripts that train and evaluate the shipped models on ``../shared/data``."""
