"""``semirobust``: the command line, one program with subcommands (``search`` is the default).

``semirobust search`` (also ``launch/search.py`` and ``semirobust-search``) finds the minimal
robust split with Ray Tune, ``report`` rebuilds a search's report from its storage; ``run`` and
``reevaluate`` come from their modules.

Every input is validated before Ray starts; a mistake ends the program with exit code 2 and one
line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from semirobust_ray.config import config_path, config_values, load_config
from semirobust_ray.options import (
    Command,
    add_config_options,
    add_search_dir,
    add_verbosity,
    error,
    run_command,
    standalone,
)
from semirobust_ray.storage import CorruptFileError, is_uri

#: ``semirobust search``: one line, for the command list.
SUMMARY = "find the minimal robust subnetwork with Ray Tune (the default command)"
DESCRIPTION = (
    "Find the minimal robust subnetwork: the smallest leading part f*_a of a network that must "
    "be adversarially robust so that adversarially training only the rest, f_b, for a few epochs "
    "comes within k of the fully robust network's accuracy (Algorithm 1 of the semirobustness "
    "paper), with Ray Tune."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The search's flags; every one is documented in README.md."""
    add_config_options(
        p, default="the quickstart", resume_note=". With --resume: only keys that may change"
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join ('auto' on a cluster node, ray://host:10001), or 'local' "
        "for a new local instance; default: join a running cluster if any, else start locally",
    )
    p.add_argument(
        "--storage-path",
        default="results",
        help="where results, checkpoints and TensorBoard logs go: a local directory "
        "(default: ./results) or s3://, gs:// or a shared filesystem on a cluster",
    )
    p.add_argument("--name", default=None, help="search name (default: MODEL-DATASET-SEARCH)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted search from its storage alone (same --storage-path and "
        "--name; config and baseline come from there) without re-running finished trials",
    )
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        default=None,
        help="GPUs each trial reserves (fractions share a GPU); default: the config's "
        "gpus_per_trial (0 = CPU)",
    )


def run(args: argparse.Namespace) -> int:
    """Validate, search, print where everything is."""
    try:
        overrides = list(args.overrides)
        if args.gpus_per_trial is not None:
            overrides.append(f"gpus_per_trial={args.gpus_per_trial}")
        config = load_config(config_path(args.config), overrides)
        changes = None
        if args.resume:
            # The stored config is the search's; only the keys given here may change it.
            given = config_path(args.config) if args.config is not None else None
            changes = config_values(given, overrides)
        from semirobust_ray.ray_search import run_search  # imports Ray: only for valid input

        outcome = run_search(
            config,
            storage_path=args.storage_path,
            name=args.name,
            address=args.address,
            resume=args.resume,
            changes=changes,
            verbose=args.verbosity,  # Tune's: 0 no status table, 2 every checkpoint too
        )
    except (ValueError, CorruptFileError) as err:  # user-facing errors and damaged files
        return error(err)
    except KeyboardInterrupt:
        print(
            "interrupted: finished trials are kept; continue with the same command plus --resume",
            file=sys.stderr,
        )
        return 130
    _print_summary(outcome)
    return 0


# --- semirobust report --------------------------------------------------------------------


def _report_lines(m: dict[str, Any], paths: dict[str, str]) -> Iterable[str]:
    """The answer, the trials not counted and the files written, for ``semirobust report``."""
    from semirobust_ray.report import answer_lines

    yield from answer_lines(m)
    for f in m["failed"]:
        yield f"failed trial |f_b| = {f.get('fb_layers', '?')}: {f['failure']}"
    if m["unfinished"]:
        yield f"{len(m['unfinished'])} unfinished trial(s) not counted"
    for p in paths.values():
        yield f"wrote {p}"


#: ``semirobust report``: one line, for the command list.
REPORT_SUMMARY = "rebuild Table 1, the figures, the frontier and the answer from stored results"


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    """``semirobust report``'s ``DIR`` and ``--out``."""
    add_search_dir(p, runner_results=True)
    p.add_argument("--out", default=None, help="where to write (default: DIR itself)")


def report(args: argparse.Namespace) -> int:
    """Rebuild the report of ``args.dir``; print Table 1 and where the files are."""
    from semirobust_ray.report import minimal_split, table1, table1_markdown, write_report
    from semirobust_ray.results import load_results

    try:
        results = load_results(args.dir)
        is_file = not is_uri(args.dir) and Path(args.dir).is_file()
        out = args.out or (str(Path(args.dir).parent) if is_file else args.dir)
        answer = minimal_split(results)  # once, for the files and the lines printed here
        paths = write_report(results, out, answer)
    except (ValueError, CorruptFileError) as err:  # ReportError and config errors alike
        return error(err)
    except OSError as err:
        return error(f"cannot write the report: {err}")
    print(table1_markdown(table1(results, answer)), end="")
    for line in _report_lines(answer, paths):
        print(line)
    return 0


def report_main(argv: list[str] | None = None) -> int:
    """``python -m semirobust_ray.report DIR [--out OUT]`` (the same as ``semirobust report``)."""
    description = (
        "Rebuild Table 1, the ρ-vs-depth figure, the frontier and minimal_split.json from "
        "stored results (a runner results.json or a Tune search directory)."
    )
    return standalone(
        "python -m semirobust_ray.report", description, (add_report_arguments, report), argv
    )


def commands() -> dict[str, tuple[str, Command]]:
    """``semirobust``'s subcommands: name -> (one-line summary, (add_arguments, run))."""
    from semirobust_ray import reevaluate, runner

    return {
        "search": (SUMMARY, (add_arguments, run)),
        "run": (runner.SUMMARY, (runner.add_arguments, runner.run)),
        "report": (REPORT_SUMMARY, (add_report_arguments, report)),
        "reevaluate": (reevaluate.SUMMARY, (reevaluate.add_arguments, reevaluate.run)),
    }


def build_parser(prog: str = "semirobust") -> argparse.ArgumentParser:
    """``semirobust COMMAND ...``; every command's flags are documented in README.md."""
    p = argparse.ArgumentParser(
        prog=prog,
        description=DESCRIPTION + " Without a command: search.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (summary, (add, command)) in commands().items():
        child = sub.add_parser(name, help=summary, description=summary[0].upper() + summary[1:])
        add(child)
        add_verbosity(child)
        child.set_defaults(run=command)
    return p


def main(argv: list[str] | None = None) -> int:
    """``semirobust [COMMAND] ...``; without a command, ``semirobust ...`` is a search."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in commands() and argv[0] not in ("-h", "--help")):
        argv = ["search", *argv]
    args = build_parser().parse_args(argv)
    return run_command(args.run, args)


def search_main(argv: list[str] | None = None) -> int:
    """``launch/search.py ...`` and ``semirobust-search ...``: ``semirobust search ...``."""
    return standalone("launch/search.py", DESCRIPTION, (add_arguments, run), argv)


def _print_summary(outcome) -> None:
    from semirobust_ray.report import answer_lines, table1, table1_markdown

    print()
    print(table1_markdown(table1(outcome.results, outcome.answer)))
    for line in answer_lines(outcome.answer):
        print(line)
    print()
    print(
        f"Report:      {outcome.experiment_dir}  (table1.md, frontier.png, frontier.csv, "
        "rho_vs_depth.png, minimal_split.json)"
    )
    print(f"TensorBoard: tensorboard --logdir {outcome.experiment_dir}")
    print(f"Wall time:   {outcome.seconds:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
