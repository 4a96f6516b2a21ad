"""The theory: task-to-factor graphs, the Uniform Identifiability Condition, graph repair."""
