"""The subcommands, kept thin: each parses options and calls into the package."""

from __future__ import annotations

import click

from .cli import main
