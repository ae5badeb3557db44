"""The ``radsensor`` command line: thin click commands that call the library.

Subcommands live in ``sensor/commands/``, one module each, and are listed in one explicit table
here. Exit codes: 0 ok, 1 runtime failure, 2 usage or bad input (one clear line on stderr).
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from sensor import __version__

# (command name, module under sensor.commands, click object in it). Imported on use so that
# `radsensor decode` does not pay for scikit-learn and `radsensor --version` is instant.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("decode", "decode", "decode"),
    ("features", "features", "features"),
    ("train", "train", "train"),
    ("detect", "detect", "detect"),
    ("evaluate", "evaluate", "evaluate"),
    ("model", "model", "model"),
    ("run", "run", "run"),
    ("config", "config", "config"),
)


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, _, _ in COMMANDS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for name, module, attr in COMMANDS:
            if name == cmd_name:
                return getattr(importlib.import_module(f"sensor.commands.{module}"), attr)
        return None


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="radsensor")
def cli() -> None:
    """Passive DICOM/HL7 sensor for hospital imaging networks."""


def main() -> None:
    if not sys.stdout.isatty():
        # Tables piped to a file or CI log would otherwise wrap at rich's 80-column default.
        os.environ.setdefault("COLUMNS", "200")
    try:
        cli.main(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
