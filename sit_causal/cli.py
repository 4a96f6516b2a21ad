"""``sit-causal``: the UIC checker and the synthetic experiments.

Each command's body lives in the module of its concept; this file only wires the app.
"""

from __future__ import annotations

import sys

from sit_causal.cli_helpers import LazyCommand, add_lazy_commands, make_app, run_app
from sit_causal.uic_cli import check_uic_command

__all__ = ["app", "main"]

app = make_app("SIT theory tools: check the Uniform Identifiability Condition, simulate, validate.")


@app.callback()
def _root() -> None:
    """SIT theory tools: check the Uniform Identifiability Condition, simulate, validate."""


app.command("check-uic")(check_uic_command)
# torch loads only for the commands that train models; `help` is what the command list shows without
# importing them (tests/test_startup.py keeps it equal to each docstring's first paragraph)
add_lazy_commands(app, {
    "simulate": LazyCommand(
        "sit_causal.simulate:simulate_command",
        help="Train SIT and the baselines on data from the meta-SCM, several seeds: table, results.json, plots.",
    ),
    "validate": LazyCommand(
        "sit_causal.validate:validate_command",
        help="Theory check: train SIT on many random graphs (holding and violating the UIC) and measure how "
             "well the UIC checker predicts which factors are recovered (AUROC, confusion table, plot).",
    ),
})


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    sys.exit(run_app(app, "sit-causal", argv))


if __name__ == "__main__":
    main()
