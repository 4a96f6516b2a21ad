"""A known-truth text testbed: the meta-SCM rendered into instructions, with planted shortcuts.

``build`` (:mod:`sit_nlp.testbed.build`) draws the data, the true task graph, a word-level tokenizer and a
random BART; ``run`` (:mod:`sit_nlp.testbed.run`) trains vanilla and SIT on it, evaluates every split and
scores the learned graph and factors against the truth.
"""
