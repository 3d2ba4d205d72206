"""The root `c3dfeat` click group, where library errors become one-line messages.

Command modules register themselves on `cli` (c3dfeat/cli/__init__.py imports them all).
Library errors (C3DFeatError) become one-line click errors here and nowhere else.
"""
from __future__ import annotations

from typing import Any

import click

from c3dfeat.errors import C3DFeatError, NoVideosError
from c3dfeat.version import __version__


class UsageError(click.ClickException):
    """Bad usage in one line ("Error: ..."), exit code 2, without click's usage block."""

    exit_code = 2


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NoVideosError as e:  # the inputs are wrong, not the run: bad usage
            raise UsageError(str(e)) from None
        except C3DFeatError as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="c3dfeat")
def cli() -> None:
    """Spatiotemporal video features from C3D, Res3D, R(2+1)D and CSN, in one HDF5 file."""


def main() -> None:
    cli(prog_name="c3dfeat")
