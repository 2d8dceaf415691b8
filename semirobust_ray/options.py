"""Command-line options shared by the subcommands of ``semirobust``: one definition, one wording.

Every subcommand module (:mod:`~semirobust_ray.cli` for ``search``, :mod:`~semirobust_ray.runner`,
:mod:`~semirobust_ray.report`, :mod:`~semirobust_ray.reevaluate`) defines ``add_arguments(parser)``
and ``run(args) -> int``; :func:`standalone` turns the pair into the module's own ``main`` for
``python -m semirobust_ray.MODULE``, and ``semirobust`` mounts the same pairs as subcommands.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from semirobust_ray.logs import configure

Command = tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]


class HelpFormatter(argparse.HelpFormatter):
    """argparse's own, except that a text of several lines (the config key list) keeps them."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def add_config_options(p: argparse.ArgumentParser, *, default: str, resume_note: str = "") -> None:
    """``--config FILE|NAME`` and ``--set KEY=VALUE`` (repeatable); ``default`` says what runs
    without ``--config``. The help ends with every config key, written from the schema."""
    from semirobust_ray.config_doc import help_text

    p.epilog = help_text()
    p.formatter_class = HelpFormatter
    p.add_argument(
        "--config",
        default=None,
        help="search-space YAML file, or the name of a bundled one (e.g. paper_vgg16_cifar10); "
        f"default: {default}{resume_note}",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config key; the value is YAML, e.g. --set split_depths=[2,4,8]; "
        "SECTION.KEY sets one entry of a mapping, e.g. --set baseline.regular=std.pt "
        "(repeatable)",
    )


def add_search_dir(p: argparse.ArgumentParser, *, runner_results: bool = False) -> None:
    """The positional ``DIR``: a search's experiment directory or storage URI."""
    extra = ", or a runner's results.json" if runner_results else ""
    p.add_argument(
        "dir",
        metavar="DIR",
        help=f"the search's directory or storage URI (results/NAME, s3://bucket/runs/NAME){extra}",
    )


#: ``--quiet`` / default / ``--verbose``: the level of the package's lines.
LOG_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


def add_verbosity(p: argparse.ArgumentParser) -> None:
    """``-q/--quiet`` and ``-v/--verbose`` (every subcommand); ``args.verbosity`` is 0, 1 or 2."""
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "-q",
        "--quiet",
        dest="verbosity",
        action="store_const",
        const=0,
        default=1,
        help="warnings, errors and the result only (no progress lines, no Tune status table)",
    )
    group.add_argument(
        "-v",
        "--verbose",
        dest="verbosity",
        action="store_const",
        const=2,
        help="also debug lines and Ray's message for every saved checkpoint",
    )


def run_command(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Set the log level ``args.verbosity`` asks for, then ``run(args)``."""
    configure(LOG_LEVELS[args.verbosity])
    return run(args)


def error(message: object) -> int:
    """Print ``error: MESSAGE`` (one line) on stderr; the exit code of every bad input, 2."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def standalone(prog: str, description: str, command: Command, argv: list[str] | None) -> int:
    """Parse ``argv`` with ``command``'s options under ``prog`` and run it."""
    add_arguments, run = command
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_arguments(parser)
    add_verbosity(parser)
    return run_command(run, parser.parse_args(argv))
