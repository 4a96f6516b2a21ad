"""Experiments on the synthetic half: the models compared, one experiment, ``simulate``, ``validate``, the job
executor, tables and figures."""
