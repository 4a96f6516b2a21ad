"""A known-truth text testbed: the meta-SCM rendered into instructions, with planted shortcuts.

:mod:`sit_nlp.testbed.build` draws the data, the true task graph (:mod:`~sit_nlp.testbed.grammar`,
:mod:`~sit_nlp.testbed.backdoor`), a word-level tokenizer and a random BART (:mod:`~sit_nlp.testbed.backbone`);
:mod:`sit_nlp.testbed.jobs` trains vanilla, SIT and its ablations on it, evaluates every split
(:mod:`~sit_nlp.testbed.evaluation`, :mod:`~sit_nlp.testbed.fewshot`) and scores the learned graph and factors
against the truth; :mod:`sit_nlp.testbed.controls` and :mod:`sit_nlp.testbed.report` gate and summarise.
The commands are ``sit-nlp testbed build`` and ``sit-nlp testbed run`` (:mod:`sit_nlp.cli.testbed`).
"""
