"""``sit-nlp``: train, evaluate and score SIT and vanilla instruction tuning."""

from __future__ import annotations

import sys

from sit_causal._cli import make_app, run_app
from sit_nlp.train import train_command

__all__ = ["app", "main"]

app = make_app("Structural Instruction Tuning on real encoder-decoders: train, eval, score.")


@app.callback()
def _root() -> None:
    """Structural Instruction Tuning on real encoder-decoders: train, eval, score."""


app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(train_command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    sys.exit(run_app(app, "sit-nlp", argv))


if __name__ == "__main__":
    main()
