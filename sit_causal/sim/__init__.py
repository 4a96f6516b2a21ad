"""Simulation: exponential-family priors, latent SCMs, and generators of task-to-factor graphs."""
