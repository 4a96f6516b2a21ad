"""``sit-nlp testbed``: the known-truth text testbed's commands (imports stay light until one runs)."""

from __future__ import annotations

from sit_causal.cli.common import make_app
from sit_nlp.testbed.build import build_command
from sit_nlp.testbed.run import run_command

__all__ = ["testbed_app"]

testbed_app = make_app("A known-truth text testbed: build it from the meta-SCM, run vanilla and SIT on it.")
testbed_app.command("build")(build_command)
testbed_app.command("run")(run_command)
