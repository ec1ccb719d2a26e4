"""The LightningCLI behind ``bsmamba2 train``: the module, the MUSDB18 data module, resume."""

from __future__ import annotations

import warnings

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from bsmamba2.data.datamodule import MUSDBDataModule
from bsmamba2.training.checkpoint_io import AtomicCheckpointIO
from bsmamba2.training.module import BSMamba2Module


class TrainCLI(LightningCLI):
    """LightningCLI with the targets shared by data and model and a ``--ckpt_path`` option."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.targets", "model.targets")
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="resume: 'last' (the newest last.ckpt of the checkpoint folder) or a checkpoint path",
        )


def train(argv: list[str]) -> TrainCLI:
    """Parse ``argv`` as ``bsmamba2 train`` does, then fit (resuming from ``--ckpt_path``)."""
    # argv comes from our own command line, which LightningCLI would otherwise warn about.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
    cli = TrainCLI(
        BSMamba2Module,
        MUSDBDataModule,
        args=argv,
        run=False,
        trainer_defaults={"use_distributed_sampler": False},  # the data module shards by rank itself
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "bsmamba2 train"},
    )
    strategy = cli.trainer.strategy
    if type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.config.ckpt_path)
    return cli
