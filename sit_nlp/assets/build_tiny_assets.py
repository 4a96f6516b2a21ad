"""Rebuild the tiny assets shipped with :mod:`sit_nlp` (tokenizer and instruction fixture).

Everything here is written by this script from word lists typed in by hand: no downloaded text.

* ``tiny_train.jsonl`` / ``tiny_eval.jsonl``: a toy instruction-tuning mixture of six word-manipulation
  tasks (four generation, two multiple choice) and ``tiny_unseen.jsonl``, one task held out, in the
  :mod:`sit_nlp.data.records` schema. Used by ``configs/tiny.yaml`` and the tests.
* ``tiny_tokenizer.json``: a byte-level BPE (vocabulary 512) trained with ``tokenizers`` on the fixture
  and the short prose below; special tokens ``<pad>`` = 0, ``<s>`` = 1, ``</s>`` = 2, ``<unk>`` = 3.

Run from anywhere: ``python sit_nlp/assets/build_tiny_assets.py`` (deterministic: seed 0).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
COLOURS = "red green blue yellow black white purple orange brown grey pink gold".split()
ANIMALS = "cat dog bird fish horse mouse lion tiger sheep goat duck frog bear wolf fox owl".split()
OBJECTS = "table chair lamp book cup door window river stone tree house road boat car bell key".split()
GOOD = "good great happy lovely bright kind warm pleasant wonderful fine".split()
BAD = "bad sad awful dark cruel cold nasty terrible poor grim".split()
NUMBERS = "zero one two three four five six seven eight nine".split()
PROSE = """
Instruction tuning trains one model on many tasks, each described by a short instruction written in
plain words. The model reads the instruction and the input, and writes the answer. A good model follows
an instruction it has never seen before. The cat sat by the warm lamp while the dog slept under the
table. A small bird sang in the green tree near the river, and the old horse walked slowly down the road.
Answer with one word. Write the words in reverse order. Copy the sentence. Which word is an animal?
Is the sentence positive or negative? Count the words and answer with a number.
"""


def _sentence(rng: random.Random, k: int) -> list[str]:
    pool = COLOURS + ANIMALS + OBJECTS
    return [rng.choice(pool) for _ in range(k)]


def make_example(task: str, rng: random.Random) -> dict:
    words = _sentence(rng, rng.randint(3, 6))
    if task == "reverse_words":
        return {"instruction": "Write the words in reverse order.", "input": " ".join(words),
                "output": " ".join(reversed(words)), "category": "rewriting"}
    if task == "copy_text":
        return {"instruction": "Copy the sentence exactly.", "input": " ".join(words),
                "output": " ".join(words), "category": "rewriting"}
    if task == "first_word":
        return {"instruction": "Answer with the first word of the sentence.", "input": " ".join(words),
                "output": words[0], "category": "extraction"}
    if task == "find_animal":
        words = _sentence(rng, 3)
        words = [w for w in words if w not in ANIMALS] or ["stone"]
        animal = rng.choice(ANIMALS)
        words.insert(rng.randrange(len(words) + 1), animal)
        return {"instruction": "Which word in the sentence is an animal?", "input": " ".join(words),
                "output": animal, "category": "extraction"}
    if task == "sentiment":
        positive = rng.random() < 0.5
        adjective = rng.choice(GOOD if positive else BAD)
        thing = rng.choice(ANIMALS + OBJECTS)
        text = f"the {thing} is {adjective}"
        return {"instruction": "Is the sentence positive or negative?", "input": text,
                "output": "positive" if positive else "negative", "options": ["positive", "negative"],
                "category": "classification"}
    if task == "count_words":
        return {"instruction": "How many words are in the sentence? Answer with a number.",
                "input": " ".join(words), "output": NUMBERS[len(words)], "options": NUMBERS[1:8],
                "category": "classification"}
    if task == "last_word":  # held out: never in training
        return {"instruction": "Answer with the last word of the sentence.", "input": " ".join(words),
                "output": words[-1], "category": "extraction"}
    raise ValueError(task)


TRAIN_TASKS = ["reverse_words", "copy_text", "first_word", "find_animal", "sentiment", "count_words"]


def build_records(tasks: list[str], per_task: int, rng: random.Random, split: str) -> list[dict]:
    out = []
    for task in tasks:
        for i in range(per_task):
            ex = make_example(task, rng)
            out.append({"id": f"{task}-{split}-{i}", "task": task, "dataset": f"tiny_{task}", **ex})
    rng.shuffle(out)
    return out


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def train_tokenizer(texts: list[str], path: Path) -> None:
    from sit_nlp.data.tokenizer import train_bpe_tokenizer

    train_bpe_tokenizer(texts, vocab_size=512).backend_tokenizer.save(str(path))


def main() -> None:
    rng = random.Random(0)
    train = build_records(TRAIN_TASKS, 40, rng, "train")
    evaluation = build_records(TRAIN_TASKS, 8, rng, "eval")
    unseen = build_records(["last_word"], 16, rng, "unseen")
    write_jsonl(train, HERE / "tiny_train.jsonl")
    write_jsonl(evaluation, HERE / "tiny_eval.jsonl")
    write_jsonl(unseen, HERE / "tiny_unseen.jsonl")
    texts = [PROSE, " ".join(COLOURS + ANIMALS + OBJECTS + GOOD + BAD + NUMBERS)]
    texts += [f"{r['instruction']}\n\n{r['input']} {r['output']}" for r in train + evaluation + unseen]
    train_tokenizer(texts, HERE / "tiny_tokenizer.json")


if __name__ == "__main__":
    main()
