"""``python -m sit_causal.cli``: the same as the console script."""

from sit_causal.cli.main import main

main()
