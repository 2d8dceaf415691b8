"""``launch/search.py`` / ``semirobust-search``: find the minimal robust split with Ray Tune.

Every input is validated before Ray starts; a mistake ends the program with exit code 2 and one
line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from semirobust_ray.config import config_path, config_values, load_config
from semirobust_ray.storage import CorruptFileError


def build_parser() -> argparse.ArgumentParser:
    """The launcher's flags; every one is documented in README.md."""
    p = argparse.ArgumentParser(
        prog="launch/search.py",
        description="Find the minimal robust subnetwork: the smallest leading part f*_a of a "
        "network that must be adversarially robust so that adversarially training only the rest, "
        "f_b, for a few epochs comes within k of the fully robust network's accuracy "
        "(Algorithm 1 of the semirobustness paper), with Ray Tune.",
    )
    p.add_argument(
        "--config",
        default=None,
        help="search-space YAML file, or the name of a bundled one (e.g. paper_vgg16_cifar10); "
        "default: the quickstart. With --resume: only keys that may change on a resume",
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
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse, validate, search, print where everything is."""
    args = build_parser().parse_args(argv)
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
        )
    except (ValueError, CorruptFileError) as err:  # user-facing errors and damaged files
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "interrupted: finished trials are kept; continue with the same command plus --resume",
            file=sys.stderr,
        )
        return 130
    _print_summary(outcome)
    return 0


def _print_summary(outcome) -> None:
    from semirobust_ray.report import answer_lines, table1, table1_markdown

    print()
    print(table1_markdown(table1(outcome.results)))
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
