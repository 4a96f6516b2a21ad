"""The ``sit-causal`` command line: the app, its commands, and the typer plumbing both halves share."""
