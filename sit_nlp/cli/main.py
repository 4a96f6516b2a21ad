"""``sit-nlp``: train, evaluate and score SIT and vanilla instruction tuning.

Each command lives in the command-line module of its concern (:mod:`sit_nlp.cli.train`,
:mod:`sit_nlp.cli.evaluate`, :mod:`sit_nlp.cli.score`, :mod:`sit_nlp.cli.data`, :mod:`sit_nlp.cli.testbed`);
this file only wires the app.
"""

from __future__ import annotations

import sys

from sit_causal.cli.common import LazyCommand, add_lazy_commands, make_app, run_app
from sit_nlp.cli.data import fetch_command, hf_command, mixture_build_command, tokenizer_command
from sit_nlp.cli.score import compare_command, score_command
from sit_nlp.cli.testbed import testbed_app

__all__ = ["app", "main"]

app = make_app("Structural Instruction Tuning on real encoder-decoders: train, eval, score.")


@app.callback()
def _root() -> None:
    """Structural Instruction Tuning on real encoder-decoders: train, eval, score."""


# torch and transformers load only for the commands that need them; `help` is what the command list
# shows without importing them (tests/test_startup.py keeps it equal to each docstring's first paragraph)
add_lazy_commands(app, {
    "train": LazyCommand(
        "sit_nlp.cli.train:train_command",
        help="Train SIT or vanilla; extra --key=value arguments override the config (e.g. --train.lr=3e-4).",
        settings={"allow_extra_args": True, "ignore_unknown_options": True},
    ),
    "eval": LazyCommand(
        "sit_nlp.cli.evaluate:eval_command",
        help="Write predictions of a trained model on a split (JSONL for `sit-nlp score`).",
    ),
    "masks": LazyCommand(
        "sit_nlp.cli.evaluate:masks_command",
        help="Masks of every task (training and held-out), a heatmap, and the UIC verdict of the learned graph.",
    ),
})

data_app = make_app("Instruction data: fetch BIG-bench, build mixtures, convert Hugging Face datasets.")
app.add_typer(data_app, name="data")
data_app.command("fetch")(fetch_command)
data_app.command("build")(mixture_build_command)
data_app.command("hf")(hf_command)
data_app.command("tokenizer")(tokenizer_command)
app.add_typer(testbed_app, name="testbed")
app.command("score")(score_command)
app.command("compare")(compare_command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    sys.exit(run_app(app, "sit-nlp", argv))


if __name__ == "__main__":
    main()
