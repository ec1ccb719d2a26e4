"""The mixer registry: a mixer chosen by name, its own options and defaults in the config, YAML
and checkpoints, and config inference from its keys."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
from torch import nn

from bsmamba2.checkpoint import infer_config, load_model, save_model
from bsmamba2.model import BSMamba2, BSMamba2Config, mixers
from bsmamba2.model.mamba2 import Mamba2
from bsmamba2.model.mixers import build_mixer, infer_mixer, mixer_defaults, set_recompute
from tests.helpers.configs import TINY

SMALL = {"dim": 16, "depth": 1}


class Toy(nn.Module):
    """A second mixer: a gated linear map with one shared option (d_state) and one of its own."""

    def __init__(self, d_model: int, *, d_state: int = 3, gain: float = 0.5) -> None:
        super().__init__()
        self.d_state, self.gain = d_state, gain
        self.proj = nn.Linear(d_model, d_model)
        self.state_weight = nn.Parameter(torch.randn(d_state, d_model))
        self.recompute = "none"

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return self.gain * self.proj(u) * torch.sigmoid(u @ self.state_weight.t()).mean(-1, keepdim=True)

    @staticmethod
    def infer_options(state: Mapping[str, torch.Tensor], d_model: int, ngroups: int = 1) -> dict | None:
        if set(state) != {"proj.weight", "proj.bias", "state_weight"}:
            return None
        return {"d_state": state["state_weight"].shape[0]}


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(mixers.MIXERS, "toy", Toy)  # the one line a new mixer adds


def test_default_mixer_is_the_paper_mamba2():
    cfg = BSMamba2Config()
    assert cfg.mixer == "mamba2" and cfg.mixer_options == {}
    assert cfg.mixer_kwargs == {"expand": 4, "headdim": 64, "d_state": 128, "ngroups": 1, "d_conv": 4}
    assert mixer_defaults("mamba2") == cfg.mixer_kwargs
    assert BSMamba2Config(d_state=128, headdim=64) == cfg
    block_mixer = BSMamba2(TINY).layers[0][0].forward_blocks[0].mixer
    assert isinstance(block_mixer, Mamba2) and block_mixer.d_state == TINY.d_state == 8


def test_unknown_mixers_and_options_are_errors():
    with pytest.raises(ValueError, match="unknown mixer 'mamba9': expected one of mamba2"):
        BSMamba2Config(mixer="mamba9")
    with pytest.raises(ValueError, match="unknown mixer_options for mamba2: dt_rank"):
        BSMamba2Config(mixer_options={"dt_rank": 4})
    with pytest.raises(ValueError, match="unknown mixer 'nope'"):
        build_mixer("nope", 8, {})


def test_a_new_mixer_takes_its_own_defaults_and_options(toy):
    cfg = BSMamba2Config(**SMALL, mixer="toy")
    # Its defaults, not Mamba-2's; shared options it lacks stay unset.
    assert (cfg.d_state, cfg.expand, cfg.headdim, cfg.ngroups, cfg.d_conv) == (3, None, None, None, None)
    assert cfg.mixer_options == {"gain": 0.5}
    tuned = BSMamba2Config(**SMALL, mixer="toy", d_state=5, mixer_options={"gain": 2.0})
    mixer = BSMamba2(tuned).layers[0][1].backward_blocks[0].mixer
    assert isinstance(mixer, Toy) and (mixer.d_state, mixer.gain) == (5, 2.0)
    with pytest.raises(ValueError, match="the toy mixer has no option 'headdim'"):
        BSMamba2Config(**SMALL, mixer="toy", headdim=8)
    assert BSMamba2Config.from_dict(tuned.to_dict()) == tuned
    model = BSMamba2(tuned)
    set_recompute(model, "mixer")
    assert {m.recompute for m in model.modules() if isinstance(m, Toy)} == {"mixer"}


def test_changing_the_mixer_starts_from_its_defaults(toy):
    paper = BSMamba2Config(d_state=64)
    assert paper.replace(depth=2).d_state == 64  # same mixer: its options stay
    toy_cfg = paper.replace(mixer="toy", dim=16, depth=1)
    assert toy_cfg == BSMamba2Config(**SMALL, mixer="toy")
    assert paper.replace(mixer="toy", d_state=5, mixer_options={"gain": 1.0}).d_state == 5
    assert toy_cfg.replace(mixer="mamba2") == BSMamba2Config(dim=16, depth=1)
    with pytest.raises(ValueError, match="unknown BSMamba2 config keys: d_sate"):
        paper.replace(d_sate=3)
    model = BSMamba2(TINY, mixer="toy")
    assert isinstance(model.layers[0][0].forward_blocks[0].mixer, Toy) and model.config.d_state == 3


def test_a_new_mixer_round_trips_through_yaml_and_checkpoints(toy, tmp_path):
    cfg = BSMamba2Config(**SMALL, mixer="toy", d_state=4, mixer_options={"gain": 1.5})
    yaml_path = tmp_path / "toy.yaml"
    yaml_path.write_text("model:\n  dim: 16\n  depth: 1\n  mixer: toy\n  d_state: 4\n  mixer_options: {gain: 1.5}\n")
    assert BSMamba2Config.from_yaml(yaml_path) == cfg
    model = BSMamba2(cfg).eval()
    path = save_model(model, tmp_path / "toy.safetensors")
    loaded = load_model(path)
    assert loaded.config == cfg  # the options, from the stored config
    spec = torch.randn(1, 2, 1025, 6, dtype=torch.complex64)
    with torch.no_grad():
        assert torch.equal(loaded(spec), model(spec))
    # Without a stored config the mixer is recognised by its keys (its own option `gain`
    # cannot be seen in tensors: its default).
    inferred = infer_config(model.state_dict())
    assert (inferred.mixer, inferred.d_state, inferred.mixer_options) == ("toy", 4, {"gain": 0.5})


def test_mixer_inference_chooses_by_keys(toy):
    mamba = BSMamba2(TINY).layers[0][0].forward_blocks[0].mixer.state_dict()
    assert infer_mixer(mamba, TINY.dim) == ("mamba2", mixer_defaults("mamba2") | TINY.mixer_kwargs)
    toy_state = Toy(16, d_state=7).state_dict()
    assert infer_mixer(toy_state, 16) == ("toy", {"d_state": 7})
    with pytest.raises(ValueError, match="no known mixer has the parameters"):
        infer_mixer({"weight": torch.randn(2)}, 16)
