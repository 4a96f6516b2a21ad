"""The ``sit-nlp`` command line."""
