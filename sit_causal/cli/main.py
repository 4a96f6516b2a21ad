"""``sit-causal``: the UIC checker and the synthetic experiments.

Each command's body lives in the module of its concept; this file only wires the app.
"""

from __future__ import annotations

import sys

from sit_causal.cli.common import LazyCommand, add_lazy_commands, make_app, run_app
from sit_causal.cli.uic import check_uic_command

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
        "sit_causal.cli.simulate:simulate_command",
        help="Train SIT and the baselines on data from the meta-SCM, several seeds: table, results.json, plots.",
    ),
    "validate": LazyCommand(
        "sit_causal.cli.validate:validate_command",
        help="Theory check in two stages: (1) theory, no training: the selection objective's margin along the "
             "ambiguity directions on exactly linear representations, scored against the UIC checker's labels "
             "(AUROC); (2) estimator: train SIT on many random graphs and report the recovery of the factors the "
             "checker calls identifiable (rate with CI, failures listed) and the AUROC of the matched correlation.",
    ),
})


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    sys.exit(run_app(app, "sit-causal", argv))


if __name__ == "__main__":
    main()
