"""The testbed's grammar: how a sample's latent factors become a sentence, and how a task is worded.

Six latent factors ``L_1..L_6`` (columns of every factor matrix, in :data:`FACTORS` order). Each is read
through its sign, the binary attribute ``b_i = 1[L_i > 0]`` (the word's class), and its magnitude, which
picks the word inside the class (``|L_i|`` cut at :data:`MAGNITUDE_CUTS`; the words of a class are ordered,
so a word carries ``L_i`` discretised to 8 levels). Every class also has one **unseen** word that no
training sentence uses (the ``unseen_words`` split)::

    the {colour} {noun} {verb} {manner} in the {place}
    "the red cat stood quietly in the kitchen"        kind=animal, number=one, tense=past, ...
    "the blue lamps stand loudly in the garden"        kind=object, number=several, tense=present, ...

A yes/no task ``t`` reads the factors ``S_t`` with a polarity ``p_ti`` each and answers
``y_t = 1[ 2 * sum_{i in S_t} 1[b_i = p_ti] >= |S_t| ]`` ("at least half of these hold"); its instruction
names the conditions, so a held-out task (a new subset of the same conditions) is worded from known
phrases. A generation task names the words of its factors (target: those words, in factor order).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "CONDITIONS",
    "CUE_WORDS",
    "FACTORS",
    "GENERATION_TEMPLATES",
    "MAGNITUDE_CUTS",
    "WORDS",
    "YESNO_TEMPLATES",
    "factor_words",
    "generation_instruction",
    "generation_target",
    "render_sentence",
    "yesno_instruction",
    "yesno_label",
]

FACTORS: tuple[str, ...] = ("kind", "number", "tense", "colour", "place", "manner")
"""Factor names; column ``i`` of every factor matrix is ``FACTORS[i]``."""

MAGNITUDE_CUTS: tuple[float, ...] = (0.45, 0.9, 1.4)
"""``|L_i|`` below the first cut picks a class's first word, above the last its fourth."""

# WORDS[factor][b] = (four seen words ordered by |L|, one unseen word); b = 1[L > 0]. ``number`` has no words
# of its own (the noun's plural and the verb's agreement carry it); ``tense``'s words are verb stems
WORDS: dict[str, tuple[tuple[tuple[str, ...], str], tuple[tuple[str, ...], str]]] = {
    "kind": ((("lamp", "chair", "table", "cup"), "vase"), (("cat", "dog", "horse", "bird"), "wolf")),
    "tense": ((("stand", "sit", "wait", "rest"), "lie"), (("stand", "sit", "wait", "rest"), "lie")),
    "colour": ((("blue", "green", "purple", "grey"), "teal"), (("red", "orange", "yellow", "pink"), "golden")),
    "place": ((("garden", "field", "forest", "beach"), "meadow"), (("kitchen", "hall", "attic", "office"), "cellar")),
    "manner": ((("loudly", "quickly", "eagerly", "wildly"), "briskly"),
               (("quietly", "slowly", "calmly", "gently"), "softly")),
}
_PLURAL = {"lamp": "lamps", "chair": "chairs", "table": "tables", "cup": "cups", "vase": "vases", "cat": "cats",
           "dog": "dogs", "horse": "horses", "bird": "birds", "wolf": "wolves"}
_PAST = {"stand": "stood", "sit": "sat", "wait": "waited", "rest": "rested", "lie": "lay"}

CONDITIONS: dict[str, tuple[str, str]] = {
    "kind": ("an object", "an animal"),
    "number": ("only one", "several"),
    "tense": ("present tense", "past tense"),
    "colour": ("cool colour", "warm colour"),
    "place": ("outdoors", "indoors"),
    "manner": ("lively manner", "calm manner"),
}
"""``CONDITIONS[factor][p]``: the phrase for "``b_factor = p``" used in yes/no instructions."""

_FACTOR_NOUN = {"kind": "noun", "number": "number", "tense": "verb", "colour": "colour", "place": "place",
                "manner": "manner"}

YESNO_TEMPLATES: tuple[str, ...] = (
    "yes if at least half hold : {conds} .",
    "do at least half of {conds} hold ?",
    "answer yes when at least half of {conds} are true .",
)
GENERATION_TEMPLATES: tuple[str, ...] = (
    "write the {names} .",
    "copy the {names} .",
    "which {names} ?",
)
CUE_WORDS: tuple[str, str] = ("now", "please")
"""The instruction-wording shortcut: ``CUE_WORDS[y]`` opens an instruction whose answer is ``y`` (1 = yes)
at the split's cue rate."""


def factor_words(latents: np.ndarray, unseen: bool = False) -> list[dict[str, str]]:
    """The rendered word of every factor of every sample: ``(N, 6)`` latents -> ``N`` dicts keyed by
    :data:`FACTORS` (``kind``: the noun as written, plural when ``b_number = 1``; ``number``: ``"one"`` /
    ``"several"``; ``tense``: the verb, past when ``b_tense = 1``, else present with agreement; the others
    their word). ``unseen``: every class's unseen word instead of its seen words."""
    bins = np.searchsorted(np.asarray(MAGNITUDE_CUTS), np.abs(latents))
    out = []
    for row, level in zip(latents, bins, strict=True):
        bit = {name: int(row[i] > 0) for i, name in enumerate(FACTORS)}
        word = {}
        for i, name in enumerate(FACTORS):
            if name != "number":
                seen, spare = WORDS[name][bit[name]]
                word[name] = spare if unseen else seen[int(level[i])]
        noun = _PLURAL[word["kind"]] if bit["number"] else word["kind"]
        stem = word["tense"]
        verb = _PAST[stem] if bit["tense"] else (stem if bit["number"] else stem + "s")
        word.update(kind=noun, tense=verb, number="several" if bit["number"] else "one")
        out.append(word)
    return out


def render_sentence(words: dict[str, str]) -> str:
    """The sentence of one sample from its factor words (:func:`factor_words`)."""
    return f"the {words['colour']} {words['kind']} {words['tense']} {words['manner']} in the {words['place']}"


def yesno_label(bits: np.ndarray, factors: Sequence[int], polarity: Sequence[int]) -> np.ndarray:
    """``y = 1[2 * sum_i 1[b_i = p_i] >= |S|]`` for ``bits`` ``(N, 6)``; returns ``(N,)`` 0/1."""
    hits = (bits[:, list(factors)] == np.asarray(polarity)[None, :]).sum(axis=1)
    return (2 * hits >= len(factors)).astype(np.int64)


def yesno_instruction(template: int, factors: Sequence[int], polarity: Sequence[int], cue: str | None) -> str:
    """The instruction of a yes/no task: template ``template`` over the conditions ``b_i = p_i``, opened by
    the cue word (``None``: no cue)."""
    conds = " , ".join(CONDITIONS[FACTORS[i]][p] for i, p in zip(factors, polarity, strict=True))
    text = YESNO_TEMPLATES[template].format(conds=conds)
    return f"{cue} , {text}" if cue else text


def generation_instruction(template: int, factors: Sequence[int]) -> str:
    """The instruction of a generation task that names the words of ``factors``."""
    names = " and ".join(_FACTOR_NOUN[FACTORS[i]] for i in factors)
    return GENERATION_TEMPLATES[template].format(names=names)


def generation_target(words: dict[str, str], factors: Sequence[int]) -> str:
    """The words of ``factors`` (:func:`factor_words`), in factor order."""
    return " ".join(words[FACTORS[i]] for i in factors)
