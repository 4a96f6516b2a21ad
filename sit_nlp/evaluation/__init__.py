"""Evaluation: predictions, scores, comparisons of runs, learned masks."""
