"""Training: the config and the training loop."""
