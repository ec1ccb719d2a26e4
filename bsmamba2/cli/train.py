"""``bsmamba2 train --config recipes/musdb18hq/bsmamba2.yaml [overrides]``: LightningCLI.

Everything after ``train`` goes to LightningCLI: ``--config FILE`` (repeatable), dotted
overrides (``--trainer.devices 1``, ``--data.batch_size 2``), ``--print_config``, ``--help``,
and ``--ckpt_path last|PATH`` to resume.
"""

from __future__ import annotations

import argparse

from bsmamba2.errors import require_extra


def run(args: argparse.Namespace) -> int:
    require_extra("bsmamba2 train", "train")
    from bsmamba2.training.launch import train  # Lightning loads slowly: only for this command

    train(args.lightning_args)
    return 0


def register(subparsers: argparse._SubParsersAction, summary: str) -> None:
    # '+' as prefix: every '--option' stays in lightning_args, for LightningCLI to parse.
    parser = subparsers.add_parser(
        "train", help=summary, add_help=False, prefix_chars="+"
    )
    parser.add_argument("lightning_args", nargs=argparse.REMAINDER)
    parser.set_defaults(func=run)
