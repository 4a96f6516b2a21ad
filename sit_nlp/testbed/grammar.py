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
    "AMBIGUOUS",
    "CONDITIONS",
    "CUE_WORDS",
    "FACTORS",
    "GENERATION_TEMPLATES",
    "MAGNITUDE_CUTS",
    "WORDS",
    "YESNO_TEMPLATES",
    "decode_words",
    "factor_words",
    "generation_instruction",
    "generation_target",
    "parse_sentence",
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

AMBIGUOUS: dict[str, str] = {"kind": "thing", "tense": "must stay", "colour": "plain", "place": "spot",
                             "manner": "somehow"}
"""The **ambiguous** word of each factor that has words of its own: it says nothing of the factor's sign or
magnitude (observation noise of the ``backdoor`` mechanism, drawn independently of everything). ``thing``
still takes the plural (``number`` stays observed); ``must stay`` replaces the verb and its agreement."""

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


def factor_words(latents: np.ndarray, unseen: bool = False,
                 ambiguous: np.ndarray | None = None) -> list[dict[str, str]]:
    """The rendered word of every factor of every sample: ``(N, 6)`` latents -> ``N`` dicts keyed by
    :data:`FACTORS` (``kind``: the noun as written, plural when ``b_number = 1``; ``number``: ``"one"`` /
    ``"several"``; ``tense``: the verb, past when ``b_tense = 1``, else present with agreement; the others
    their word). ``unseen``: every class's unseen word instead of its seen words. ``ambiguous``: ``(N, 6)``
    bool, where true the factor is written with its :data:`AMBIGUOUS` word (ignored for ``number``)."""
    bins = np.searchsorted(np.asarray(MAGNITUDE_CUTS), np.abs(latents))
    hidden = np.zeros(latents.shape, dtype=bool) if ambiguous is None else np.asarray(ambiguous, dtype=bool)
    out = []
    for row, level, hide in zip(latents, bins, hidden, strict=True):
        bit = {name: int(row[i] > 0) for i, name in enumerate(FACTORS)}
        word = {}
        for i, name in enumerate(FACTORS):
            if name != "number":
                seen, spare = WORDS[name][bit[name]]
                word[name] = spare if unseen else seen[int(level[i])]
        noun = _PLURAL[word["kind"]] if bit["number"] else word["kind"]
        stem = word["tense"]
        verb = _PAST[stem] if bit["tense"] else (stem if bit["number"] else stem + "s")
        if hide[FACTORS.index("kind")]:
            noun = AMBIGUOUS["kind"] + ("s" if bit["number"] else "")
        if hide[FACTORS.index("tense")]:
            verb = AMBIGUOUS["tense"]
        word.update(kind=noun, tense=verb, number="several" if bit["number"] else "one")
        for name in ("colour", "place", "manner"):
            if hide[FACTORS.index(name)]:
                word[name] = AMBIGUOUS[name]
        out.append(word)
    return out


def decode_words(words: Sequence[dict[str, str]]) -> np.ndarray:
    """The best reading of the rendered words back into factor values ``(N, 6)``: each word's sign times the
    centre of its magnitude bin (the last bin: 1.8); an ambiguous or unseen word, which carries no magnitude,
    decodes to its sign times the mean ``|L|`` of a standard normal (0.8) or, ambiguous, to 0. ``number`` is
    read from the noun's plural. The factor-recovery ceiling of a model that reads the text."""
    centres = (0.225, 0.675, 1.15, 1.8)
    out = np.zeros((len(words), len(FACTORS)))
    plural = set(_PLURAL.values()) | {AMBIGUOUS["kind"] + "s"}
    for k, w in enumerate(words):
        for i, name in enumerate(FACTORS):
            if name == "number":
                out[k, i] = 0.8 if w["kind"] in plural else -0.8
                continue
            value = w[name]
            if value == AMBIGUOUS[name] or (name == "kind" and value == AMBIGUOUS["kind"] + "s"):
                continue
            if name == "kind":
                value = next((s for s, p in _PLURAL.items() if p == value), value)
            if name == "tense":
                stem = next((s for s, p in _PAST.items() if p == value), None)
                sign = 1.0 if stem is not None else -1.0
                stem = stem or (value[:-1] if value.endswith("s") and value[:-1] in _PAST else value)
                words_of = WORDS["tense"][1][0]
                out[k, i] = sign * (centres[words_of.index(stem)] if stem in words_of else 0.8)
                continue
            for b in (0, 1):
                seen, spare = WORDS[name][b]
                if value in seen:
                    out[k, i] = (1.0 if b else -1.0) * centres[seen.index(value)]
                elif value == spare:
                    out[k, i] = (1.0 if b else -1.0) * 0.8
    return out


def render_sentence(words: dict[str, str]) -> str:
    """The sentence of one sample from its factor words (:func:`factor_words`)."""
    return f"the {words['colour']} {words['kind']} {words['tense']} {words['manner']} in the {words['place']}"


def parse_sentence(sentence: str) -> dict[str, str]:
    """The factor words of a sentence written by :func:`render_sentence` (the inverse of its template;
    ``number``: ``"several"`` when the noun is plural)."""
    tokens = sentence.split()
    verb_len = len(AMBIGUOUS["tense"].split()) if tokens[3] == AMBIGUOUS["tense"].split()[0] else 1
    noun = tokens[2]
    plural = noun in _PLURAL.values() or noun == AMBIGUOUS["kind"] + "s"
    return {"colour": tokens[1], "kind": noun, "tense": " ".join(tokens[3:3 + verb_len]),
            "manner": tokens[3 + verb_len], "place": tokens[-1], "number": "several" if plural else "one"}


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
