"""The root `c3dfeat` click group, where library errors become one-line messages.

Command modules register themselves on `cli` (c3dfeat/cli/__init__.py imports them all).
Library errors (C3DFeatError) become one-line click errors here and nowhere else, and library
warnings (C3DFeatWarning) one "warning:" line on stderr when they happen.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional, Set, TextIO, Type

import click

from c3dfeat.errors import C3DFeatError, C3DFeatWarning, NoVideosError
from c3dfeat.version import __version__


class UsageError(click.ClickException):
    """Bad usage in one line ("Error: ..."), exit code 2, without click's usage block."""

    exit_code = 2


_SHOWN = "c3dfeat.warnings_shown"  # click context meta: the warnings printed so far


def shown_warnings() -> Set[str]:
    """The C3DFeatWarning messages this command has printed (summaries need not repeat them)."""
    ctx = click.get_current_context(silent=True)
    return set(ctx.meta.get(_SHOWN, ())) if ctx is not None else set()


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        shown: Set[str] = ctx.meta.setdefault(_SHOWN, set())
        with warnings.catch_warnings():  # puts the previous hook back when the command ends
            others = warnings.showwarning

            def show(message: Any, category: Type[Warning], filename: str, lineno: int,
                     file: Optional[TextIO] = None, line: Optional[str] = None) -> None:
                if not issubclass(category, C3DFeatWarning):
                    return others(message, category, filename, lineno, file, line)
                click.echo(f"warning: {message}", err=True)
                shown.add(str(message))

            warnings.showwarning = show
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
