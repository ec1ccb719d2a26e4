"""Training: the loss goes down, exact resume, DDP gradients, non-finite steps, checkpoints load.

All runs use a tiny model on 0.1 s segments of a generated MUSDB18-HQ folder. One thread per
process: on a busy 2-core machine, two threads per tiny op are many times slower than one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from torch.utils.data import DataLoader

from bsmamba2 import load_model
from bsmamba2.cli.main import main
from bsmamba2.data import MixingDataset, build_index, list_tracks, load_index
from bsmamba2.data.datamodule import MUSDBDataModule
from bsmamba2.errors import BSMamba2Error
from bsmamba2.model import BSMamba2Config
from bsmamba2.separation.separator import Separator
from bsmamba2.training import BSMamba2Module, FullTrackValidation, NonFiniteError
from bsmamba2.training.launch import train
from tests.helpers.configs import TINY, TINY_KWARGS
from tests.helpers.musdb import make_musdb

SEGMENT = 0.1


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def musdb_root(tmp_path_factory):
    root = make_musdb(tmp_path_factory.mktemp("musdb18hq"), n_train=3, seconds=2.0)
    build_index(root, window_seconds=0.4, progress=False)
    return root


def _config(folder: Path, root: Path, extra_callbacks: tuple = (), **overrides) -> Path:
    """A CPU config in the layout of recipes/musdb18hq, everything under ``folder``."""
    ckpt = str(folder / "checkpoints")
    cfg = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "precision": "32-true",
            "accumulate_grad_batches": 2,
            "gradient_clip_val": 3.0,
            "max_steps": 4,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(folder),
            "logger": [
                {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(folder)}}
            ],
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": ckpt, "filename": "best", "monitor": "val/usdr", "mode": "max"},
                },
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {
                        "dirpath": ckpt,
                        "every_n_train_steps": 1,
                        "save_top_k": 0,
                        "save_last": True,
                    },
                },
                {
                    "class_path": "tests.helpers.callbacks.LossRecorder",
                    "init_args": {"path": str(folder / "losses.txt")},
                },
                {"class_path": "bsmamba2.training.Throughput", "init_args": {"every_n_steps": 1}},
                *extra_callbacks,
            ],
        },
        "model": {"net": TINY_KWARGS},
        "data": {
            "root": str(root),
            "segment_seconds": SEGMENT,
            "batch_size": 1,
            "num_workers": 0,
            "segments_per_epoch": 6,
            "val_windows_per_track": 1,
        },
    }
    for key, value in overrides.items():
        section, name = key.split(".", 1)
        cfg[section][name] = value
    path = folder / "config.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _losses(folder: Path) -> list[tuple[int, float]]:
    rows = (line.split() for line in (folder / "losses.txt").read_text().splitlines())
    return [(int(step), float.fromhex(value)) for step, value in rows]


@pytest.mark.parametrize("net", [TINY, BSMamba2Config(**TINY_KWARGS, mixer="mamba3", mixer_options={"mimo_rank": 2})],
                         ids=["mamba2", "mamba3"])
def test_thirty_steps_reduce_the_loss(musdb_root, net):
    """30 AdamW steps (the recipe's lr 5e-4, clipping 3) on a fixed batch of two mixtures."""
    tracks = list_tracks(musdb_root, "train")
    index = load_index(musdb_root / "bsmamba2_sad.json")["subsets"]["train"]
    ds = MixingDataset(tracks, index, window=17640, segment=4410, seed=0)
    batch = [torch.stack(x) for x in zip(*[ds[i] for i in range(2)], strict=True)]
    module = BSMamba2Module(net=net)
    optimizer = module.configure_optimizers()
    losses = []
    for _ in range(30):
        loss = module.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 3.0)
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_resume_is_exact(musdb_root, tmp_path):
    """4 steps (accumulate 2, 3 steps per epoch) vs 2 steps + `--ckpt_path last` to 4."""
    args = ["--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0"]
    whole = train(["--config", str(_config(tmp_path / "whole", musdb_root)), *args])
    cut_cfg = str(_config(tmp_path / "cut", musdb_root))
    train(["--config", cut_cfg, *args, "--trainer.max_steps", "2"])
    assert (tmp_path / "cut" / "checkpoints" / "last.ckpt").is_file()
    resumed = train(["--config", cut_cfg, *args, "--ckpt_path", "last"])
    assert resumed.trainer.global_step == whole.trainer.global_step == 4
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "whole")  # bit-exact, batch by batch
    assert len(_losses(tmp_path / "whole")) == 8
    for (name, a), b in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    for a, b in zip(whole.model.ema.shadow, resumed.model.ema.shadow, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert resumed.datamodule.sampler.consumed == whole.datamodule.sampler.consumed == 8


def test_checkpoints_load_and_separate(musdb_root, tmp_path):
    folder = tmp_path / "run"
    full = {"class_path": "bsmamba2.training.FullTrackValidation", "init_args": {"every_n_epochs": 2}}
    cli = train(["--config", str(_config(folder, musdb_root, (full,), **{"trainer.max_steps": 6}))])
    ckpt = folder / "checkpoints"
    assert {p.name for p in ckpt.iterdir()} == {"best.ckpt", "best.safetensors", "last.ckpt"}
    model = cli.model.model
    live = load_model(ckpt / "last.ckpt")
    for (name, a), b in zip(model.state_dict().items(), live.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    ema = load_model(ckpt / "last.ckpt", ema=True)
    for a, b in zip(cli.model.ema.shadow, ema.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert any(not torch.equal(a, b) for a, b in zip(live.parameters(), ema.parameters(), strict=True))
    best = load_model(ckpt / "best.safetensors")  # the EMA weights at the best validation
    assert best.config.targets == ("vocals",)  # the training targets, stored in the file
    best_ema = load_model(ckpt / "best.ckpt", ema=True)
    for a, b in zip(best.state_dict().values(), best_ema.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    metrics = (folder / "lightning_logs").glob("*/metrics.csv")
    text = "".join(m.read_text() for m in metrics)
    for column in ("val/usdr", "perf/segments_per_s", "val_full/csdr_vocals", "val_full/usdr_vocals"):
        assert column in text
    # full-track scores of both validation songs at the end of epoch 2 (step 6), from the evaluation code
    assert len(list((folder / "full_validation" / "step-6").rglob("*.json"))) == 2
    # separate a file with the trained weights
    audio = np.random.default_rng(0).standard_normal((2, 22050)).astype(np.float32) * 0.1
    sf.write(tmp_path / "song.wav", audio.T, 44100)
    stems = Separator(best, device="cpu", progress=False).separate(audio, 44100)
    assert stems["vocals"].shape == audio.shape and np.isfinite(stems["vocals"]).all()


def test_mamba3_recipe_overlay_trains_loads_and_separates(musdb_root, tmp_path):
    """recipes/musdb18hq/mamba3.yaml on top of a recipe: Mamba-3 mixers, checkpoints that load as such."""
    folder = tmp_path / "run"
    overlay = Path(__file__).parents[2] / "recipes" / "musdb18hq" / "mamba3.yaml"
    cli = train(["--config", str(_config(folder, musdb_root, **{"trainer.max_steps": 2})), "--config", str(overlay),
                 "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0"])
    assert cli.model.model.config.mixer == "mamba3"
    live = load_model(folder / "checkpoints" / "last.ckpt")  # inferred from the keys
    assert live.config == BSMamba2Config(**{**TINY_KWARGS, "mixer": "mamba3"})
    for (name, a), b in zip(cli.model.model.state_dict().items(), live.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    audio = np.random.default_rng(0).standard_normal((2, 22050)).astype(np.float32) * 0.1
    stems = Separator(live, device="cpu", progress=False).separate(audio, 44100)
    assert stems["vocals"].shape == audio.shape and np.isfinite(stems["vocals"]).all()


def test_ddp_gradients_equal_one_process(musdb_root, tmp_path):
    """2 CPU processes (gloo) × batch 1 give the gradients of one process × batch 2."""
    from tests.helpers.callbacks import GradRecorder

    def run(folder: Path, devices: int, batch: int) -> None:
        folder.mkdir()
        pl.seed_everything(0)
        module = BSMamba2Module(net=TINY)
        data = MUSDBDataModule(
            str(musdb_root), segment_seconds=SEGMENT, batch_size=batch, num_workers=0, segments_per_epoch=2
        )
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=devices,
            strategy="ddp_spawn" if devices > 1 else "auto",
            max_steps=1,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            use_distributed_sampler=False,
            callbacks=[GradRecorder(str(folder))],
        )
        trainer.fit(module, datamodule=data)

    run(tmp_path / "one", devices=1, batch=2)
    run(tmp_path / "two", devices=2, batch=1)
    one = torch.load(tmp_path / "one" / "grads_rank0.pt")
    for rank in (0, 1):
        two = torch.load(tmp_path / "two" / f"grads_rank{rank}.pt")
        for name, g in one.items():
            torch.testing.assert_close(two[name], g, rtol=1e-5, atol=1e-8, msg=name)


class _Batches(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _fit(module: BSMamba2Module, items) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=len(items),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(_Batches(items), batch_size=None))
    return trainer


def test_nonfinite_steps_are_skipped_then_stop():
    torch.manual_seed(0)
    good = (torch.randn(1, 2, 4410) * 0.1, torch.randn(1, 1, 2, 4410) * 0.05)
    bad = (torch.full((1, 2, 4410), float("nan")), good[1])
    module = BSMamba2Module(net=TINY, max_nonfinite=3)
    before = [p.detach().clone() for p in module.parameters()]
    with pytest.warns(UserWarning, match="non-finite loss"):
        _fit(module, [bad, bad])
    assert module.nonfinite_total == 2
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))  # nothing stepped
    with (
        pytest.raises(NonFiniteError, match="3 non-finite losses/gradients in a row"),
        pytest.warns(UserWarning),
    ):
        _fit(module, [bad, bad, bad])
    # a non-finite gradient (finite loss): skipped too, then a good step resets the run of failures
    module = BSMamba2Module(net=TINY, max_nonfinite=2)
    param = next(module.model.parameters())
    handle = param.register_hook(lambda g: g * float("inf"))
    before = [p.detach().clone() for p in module.parameters()]
    with pytest.warns(UserWarning, match="non-finite gradient"):
        _fit(module, [good])
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))
    handle.remove()
    _fit(module, [good])
    assert module.nonfinite_total == 1 and module._nonfinite_run == 0
    assert not all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_print_config_and_targets_link(musdb_root, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # through the `bsmamba2 train` command line
        main(
            [
                "train",
                "--config",
                "recipes/musdb18hq/bsmamba2.yaml",
                "--data.targets",
                "[vocals, drums]",
                "--print_config",
            ]
        )
    assert exit_info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (
        printed["trainer"]["accumulate_grad_batches"]
        * printed["data"]["batch_size"]
        * printed["trainer"]["devices"]
        == 60
    )
    assert printed["model"]["lr"] == 5e-4 and printed["model"]["net"]["dim"] == 256
    module = BSMamba2Module(net=TINY, targets=["vocals", "drums"])
    assert module.model.config.n_stems == 2
    assert json.loads(json.dumps(module.hparams))["targets"] == ["vocals", "drums"]


def test_train_errors_are_one_line(tmp_path, capsys):
    config = _config(tmp_path / "run", tmp_path / "no_musdb")
    assert main(["train", "--config", str(config)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("bsmamba2: error:") and "no SAD index; run `bsmamba2 prepare" in err


def test_full_track_validation_needs_ffmpeg_up_front_for_stem_mp4_only(monkeypatch):
    """MUSDB18's .stem.mp4 songs are read through musdb: without ffmpeg the callback stops the
    run at the start, in one line, not at its first validation. MUSDB18-HQ needs no ffmpeg."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    callback = FullTrackValidation(every_n_epochs=1)
    with pytest.raises(BSMamba2Error, match=r"FullTrackValidation: musdb needs the ffmpeg .*drop this callback"):
        callback.on_fit_start(SimpleNamespace(datamodule=SimpleNamespace(is_wav=False)), None)
    callback.on_fit_start(SimpleNamespace(datamodule=SimpleNamespace(is_wav=True)), None)


MAMBA1_NET = {"mixer": "mamba", "dim": 16, "depth": 1, "expand": 2, "d_state": 4}


def test_mamba1_mixer_trains_loads_and_separates(musdb_root, tmp_path):
    """``mixer: mamba`` end to end: 30 steps lower the loss; a run through the command line's
    training writes checkpoints that load as Mamba-1 models and separate."""
    tracks = list_tracks(musdb_root, "train")
    index = load_index(musdb_root / "bsmamba2_sad.json")["subsets"]["train"]
    ds = MixingDataset(tracks, index, window=17640, segment=4410, seed=0)
    batch = [torch.stack(x) for x in zip(*[ds[i] for i in range(2)], strict=True)]
    module = BSMamba2Module(net=BSMamba2Config(**MAMBA1_NET))
    optimizer = module.configure_optimizers()
    losses = []
    for _ in range(30):
        loss = module.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 3.0)
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses

    folder = tmp_path / "run"
    train(["--config", str(_config(folder, musdb_root, **{"model.net": MAMBA1_NET, "trainer.max_steps": 3}))])
    best = load_model(folder / "checkpoints" / "best.safetensors")
    official_layout = load_model(folder / "checkpoints" / "last.ckpt", ema=True)  # mixer from the keys
    for model in (best, official_layout):
        assert model.config.mixer == "mamba" and model.config.d_state == 4
    audio = np.random.default_rng(0).standard_normal((2, 22050)).astype(np.float32) * 0.1
    stems = Separator(best, device="cpu", progress=False).separate(audio, 44100)
    assert stems["vocals"].shape == audio.shape and np.isfinite(stems["vocals"]).all()


def test_mamba1_recipe_overlay(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", "recipes/musdb18hq/bsmamba2.yaml", "--config", "recipes/musdb18hq/mamba.yaml",
              "--print_config"])
    assert exit_info.value.code == 0
    net = BSMamba2Config(**yaml.safe_load(capsys.readouterr().out)["model"]["net"])
    assert (net.mixer, net.dim, net.depth, net.d_state, net.expand, net.headdim) == ("mamba", 256, 6, 16, 4, None)
