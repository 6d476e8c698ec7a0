"""The command line: one module per command group, each command thin (parse, call one core
function, render). ``app.py`` holds the Typer app, the shared options and :func:`main`,
which turns every failure into one ``error:`` line and the contract's exit code.

Where a new command goes: the module of its group (models, pull, serve, storage), or a new
module imported below; docs/architecture.md walks through it.
"""

from vmm.cli.app import app, main
from vmm.cli import models, oci, pull, serve, storage  # noqa: F401,E402 - registers the commands

__all__ = ["app", "main"]
