"""Simulation: exponential-family priors, latent SCMs, the mixing and target maps, and generators of task-to-factor
graphs."""
