"""``vidiff train CONFIG.yaml [key.path=value ...]``: run or resume a training run.

Also runnable as ``python -m vidiff.cli_train``, which is what multi-process launches use::

    accelerate launch --num_processes 2 -m vidiff.cli_train configs/shapes_t2v_tiny.yaml
    torchrun --nproc_per_node 2 -m vidiff.cli_train configs/shapes_t2v_tiny.yaml
"""

from __future__ import annotations

import argparse
import os
import sys


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="train a model from a YAML config (resumes from the latest checkpoint in its output_dir)",
        description="Train (or resume) a run. Overrides are key.path=value pairs, e.g. train.max_steps=200.",
    )
    _add_arguments(p)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="training config (YAML), e.g. configs/shapes_t2v_tiny.yaml")
    p.add_argument("overrides", nargs="*", help="settings to change, as key.path=value (values parsed as YAML)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    """Returns 0 when the run finished or stopped cleanly (it can be resumed), 2 for a bad config or input.

    Under torchrun/accelerate launch (WORLD_SIZE > 1) it does not return: after the clean shutdown it ends the
    process with that code (see :func:`_exit_launched_child`).
    """
    code = _run(args)
    if _launched_by_torchrun():
        _exit_launched_child(code)
    return code


def _run(args: argparse.Namespace) -> int:
    import yaml

    from vidiff.training.config import ConfigError, config_to_dict, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        from vidiff.cli_common import describe_error

        print(f"vidiff train: error: {describe_error(err)}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    from vidiff.data.csv_datasets import NoUsableSamplesError
    from vidiff.training.checkpointing import CheckpointError
    from vidiff.training.trainer import train

    try:
        train(cfg)
    except (ConfigError, CheckpointError, NoUsableSamplesError, OSError) as err:
        if os.environ.get("VIDIFF_DEBUG"):
            raise
        from vidiff.cli_common import describe_error

        print(f"vidiff train: error: {describe_error(err)}", file=sys.stderr)
        return 2
    return 0


def _launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def _exit_launched_child(code: int) -> None:
    """Children of torchrun/accelerate sometimes abort during interpreter teardown after a successful run
    ("terminate called without an active exception", from native threads of the collective back ends). The trainer has
    destroyed the process group and joined its DataLoader workers, and the logs are closed, so flush and leave
    without the teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vidiff train", description="Train a vidiff model from a YAML config.")
    _add_arguments(parser)
    return run(parser.parse_intermixed_args(argv))


if __name__ == "__main__":
    sys.exit(main())
