"""Experiments on the synthetic half: the models compared, one experiment's config and its seed runner, the
options ``simulate`` and ``validate`` share, each command's run, the job executor, tables and figures."""
