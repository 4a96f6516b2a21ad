"""Evaluation: predictions, scores, comparisons of runs, learned masks, and the figures of the last two."""
