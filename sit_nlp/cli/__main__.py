"""``python -m sit_nlp.cli``: the same as the console script."""

from sit_nlp.cli.main import main

main()
