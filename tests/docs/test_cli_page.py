"""The command-line page (docs/guides/cli.md) names every subcommand and every flag ``verticals run --help``
lists, so the page cannot fall behind the CLI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def _flags(help_text: str) -> set[str]:
    return set(re.findall(r"^\s{2}(--[a-z_][a-z_.]*)", help_text, flags=re.MULTILINE))


HELP = """
import contextlib, io
from verticals.core.cli import main
for args in (["--help"], ["run", "--help"]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main(args)
    print(out.getvalue())
    print("=====")
"""


def test_the_cli_page_names_every_subcommand_and_flag():
    page = (REPOSITORY / "docs" / "guides" / "cli.md").read_text(encoding="utf-8")
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-c", HELP], capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    top, run = result.stdout.split("=====")[:2]
    subcommands = re.search(r"\{([a-z,]+)\}", top).group(1).split(",")
    assert set(subcommands) >= {"fit", "validate", "test", "predict", "run", "configs"}
    for subcommand in subcommands:
        assert f"`verticals {subcommand}" in page, subcommand
    flags = _flags(run)
    assert {"--ckpt_path", "--trainer.max_epochs", "--model.help"} <= flags
    # A `.help` flag counts as documented with its flag (the page explains `.help` flags once).
    undocumented = sorted(flag for flag in flags if f"`{flag.removesuffix('.help')}" not in page)
    assert not undocumented, (
        f"flags of `verticals run --help` missing from docs/guides/cli.md: {undocumented}"
    )
