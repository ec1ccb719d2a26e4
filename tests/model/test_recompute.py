"""Activation recompute: same loss and gradients, less memory kept for backward, the option;
``cheap`` on the reference path and with the Triton kernels (the interpreter on a CPU)."""

from __future__ import annotations

import gc
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from bsmamba2 import ops
from bsmamba2.cli.main import main
from bsmamba2.errors import BSMamba2Error
from bsmamba2.model import BSMamba2, BSMamba2Config, recompute
from bsmamba2.model.mamba2 import Mamba2
from bsmamba2.model.mixers import set_recompute
from bsmamba2.training import BSMamba2Module
from tests.helpers.extras import needs_extra

ROOT = Path(__file__).resolve().parents[2]
TINY = BSMamba2Config(dim=16, depth=2, expand=2, headdim=8, d_state=8)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def plain_run():
    """A tiny model, random input and target, and its loss and gradients without recompute."""
    torch.manual_seed(0)
    model = BSMamba2(TINY)
    spec = torch.randn(1, 2, 1025, 7, dtype=torch.complex64)
    target = torch.randn(1, 1, 2, 1025, 7, dtype=torch.complex64)
    return model, spec, target, *_loss_and_grads(model, spec, target)


def _saved_bytes(params, fn):
    """``fn()`` and the bytes of the distinct non-parameter storages autograd keeps for backward."""
    excluded = {p.untyped_storage().data_ptr() for p in params}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in excluded:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(kept.values())


def _loss_and_grads(model: BSMamba2, spec: torch.Tensor, target: torch.Tensor, bf16: bool = False):
    """The loss and every gradient; with ``bf16``, the forward under autocast as in bf16-mixed."""
    spec = spec.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = (model(spec) - target).abs().pow(2).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    grads["<input>"] = spec.grad.clone()
    return loss.detach(), grads


def _modes(module: torch.nn.Module) -> list[str]:
    return [m.recompute for m in module.modules() if isinstance(m, Mamba2)]


@pytest.mark.parametrize("mode", ["mixer", "cheap"])
@pytest.mark.parametrize("layers", [None, 1])
def test_loss_and_gradients_equal_without_recompute(mode, layers, plain_run):
    reference, spec, target, loss0, grads0 = plain_run
    model = BSMamba2(TINY)
    model.load_state_dict(reference.state_dict())
    for layer in model.layers[:layers]:
        set_recompute(layer, mode)
    assert _modes(model) == [mode] * 4 * (layers or TINY.depth) + ["none"] * 4 * (TINY.depth - (layers or TINY.depth))
    loss, grads = _loss_and_grads(model, spec, target)
    torch.testing.assert_close(loss, loss0, rtol=1e-6, atol=0)
    assert grads.keys() == grads0.keys()
    for name, g0 in grads0.items():
        assert g0.abs().max() > 0, name  # every gradient is really exercised
        torch.testing.assert_close(grads[name], g0, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("mode", ["mixer", "cheap"])
def test_recompute_replays_the_autocast_of_the_forward(mode):
    """Under bf16 autocast (Lightning's bf16-mixed) the recomputed forward is the bf16 one."""
    torch.manual_seed(4)
    reference = BSMamba2(TINY)
    spec = torch.randn(1, 2, 1025, 5, dtype=torch.complex64)
    target = torch.randn(1, 1, 2, 1025, 5, dtype=torch.complex64)
    loss0, grads0 = _loss_and_grads(reference, spec, target, bf16=True)
    model = BSMamba2(TINY)
    model.load_state_dict(reference.state_dict())
    set_recompute(model, mode)
    loss, grads = _loss_and_grads(model, spec, target, bf16=True)
    torch.testing.assert_close(loss, loss0, rtol=1e-6, atol=0)
    for name, g0 in grads0.items():
        torch.testing.assert_close(grads[name], g0, rtol=1e-5, atol=1e-7, msg=name)


def test_mixer_keeps_only_its_input():
    torch.manual_seed(1)
    mixer = Mamba2(16, d_state=8, expand=2, headdim=8)
    u = torch.randn(3, 11, 16, requires_grad=True)
    _, kept_all = _saved_bytes(mixer.parameters(), lambda: mixer(u))
    mixer.recompute = "mixer"
    out, kept = _saved_bytes(mixer.parameters(), lambda: mixer(u))
    assert kept == u.nbytes  # exactly: nothing but the input
    # without recompute: in_proj's output (z|xBC|dt), conv output, scan and norm outputs...
    assert kept_all > (mixer.in_proj.out_features + mixer.d_inner) / 16 * kept
    out.sum().backward()  # the kept tensors suffice for the backward
    assert u.grad.abs().sum() > 0



def _holders(ptr: int) -> int:
    """How many live tensors have their data at ``ptr`` (plain tensors and parameters: the
    fake tensors a torch.compile in the same process leaves behind have no data)."""
    gc.collect()
    return sum(type(o) in (torch.Tensor, torch.nn.Parameter) and o.data_ptr() == ptr for o in gc.get_objects())


@pytest.mark.parametrize("backward", [True, False])
def test_cheap_keeps_the_input_and_the_scan_output(backward, monkeypatch):
    """Autograd keeps the input, as with ``mixer``; beside the graph the scan's output y lives
    on (with ``mixer`` it does not) and reaches the recompute's scan as ``out``; nothing is
    left once the graph is gone, backward run or not."""
    torch.manual_seed(1)
    mixer = Mamba2(16, d_state=8, expand=2, headdim=8)
    u = torch.randn(3, 11, 16, requires_grad=True)
    scans = []  # (y's data, out's data) of each scan call

    def watched(*args, out=None, **kwargs):
        y = real_scan(*args, out=out, **kwargs)
        scans.append((y.data_ptr(), None if out is None else out.data_ptr()))
        return y

    real_scan = ops.ssd_scan
    monkeypatch.setattr(ops, "ssd_scan", watched)
    kept_y = {}
    for mode in ("mixer", "cheap"):
        mixer.recompute = mode
        scans.clear()
        out, kept = _saved_bytes(mixer.parameters(), lambda: mixer(u))
        assert kept == u.nbytes, mode
        y = scans[0][0]
        kept_y[mode] = _holders(y)
        if backward:
            out.sum().backward()
            assert scans[1][1] == (y if mode == "cheap" else None)  # the recompute's out
        del out
        assert _holders(y) == 0, mode
    assert kept_y == {"mixer": 0, "cheap": 1}


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("length", [11, 70])  # the short and the chunked SSD kernels (CHUNK = 64)
def test_cheap_with_the_kernels_runs_the_scan_once(length, reverse, monkeypatch):
    """With the Triton kernels ``cheap`` runs the scan's forward kernel once per step (``mixer``
    twice) and gives ``none``'s output and gradients bit for bit; a second backward of the same
    graph (``retain_graph``) computes the scan again and gives them again."""
    kernels = pytest.importorskip("tests.helpers.kernels")
    from bsmamba2.ops.triton import ssd

    launched = []

    def counted(kernel, grid, *args, **kwargs):
        if kernel is ssd._short_fwd or kwargs.get("COMPUTE_Y"):
            launched.append(kernel)
        real_launch(kernel, grid, *args, **kwargs)

    real_launch = ssd.launch
    monkeypatch.setattr(ssd, "launch", counted)
    torch.manual_seed(5)
    mixer = Mamba2(16, d_state=8, expand=2, headdim=8).to(kernels.DEVICE)
    mixer.reverse = reverse
    u = torch.randn(3, length, 16, device=kernels.DEVICE, requires_grad=True)
    dy = torch.randn(3, length, 16, device=kernels.DEVICE)
    runs = {}
    with ops.use_backend("triton"):
        for mode in ("none", "mixer", "cheap"):
            mixer.recompute = mode
            launched.clear()
            out = mixer(u)
            first = torch.autograd.grad(out, [u, *mixer.parameters()], dy, retain_graph=True)
            second = torch.autograd.grad(out, [u, *mixer.parameters()], dy)
            runs[mode] = out, first, second, len(launched)
    assert {mode: run[3] for mode, run in runs.items()} == {"none": 1, "mixer": 3, "cheap": 2}
    out0, grads0, _, _ = runs["none"]
    assert all(g.abs().max() > 0 for g in grads0)
    for mode, (out, first, second, _) in runs.items():
        assert torch.equal(out, out0), mode
        for g, g0 in zip([*first, *second], [*grads0, *grads0], strict=True):
            assert torch.equal(g, g0), mode


def test_model_keeps_several_times_less():
    torch.manual_seed(2)
    model = BSMamba2(TINY)
    # 33 frames: the batched band products keep their stacked weights (a per-step constant,
    # 2.3 MB on this toy model; on the paper model in bf16 no more than the cast copies of
    # the per-band weights autocast kept before) beside the activations this is about.
    spec = torch.randn(1, 2, 1025, 33, dtype=torch.complex64)
    kept = {}
    for setting in ("none", "first layer", "mixer"):
        set_recompute(model, "mixer" if setting == "mixer" else "none")
        if setting == "first layer":
            set_recompute(model.layers[0], "mixer")
        _, kept[setting] = _saved_bytes(model.parameters(), lambda: model(spec))
    print({m: f"{b / 1e6:.2f} MB" for m, b in kept.items()})
    # The reference ops of the CPU keep more per mixer than the Triton kernels (82 → 15 GB on the
    # paper model): the factor is larger here. Half the layers recomputed: half the saving.
    assert kept["none"] > 5 * kept["mixer"]
    saving = kept["none"] - kept["mixer"]
    assert kept["none"] - kept["first layer"] == pytest.approx(saving / 2, rel=0.05)


def test_inference_and_layout_unaffected(monkeypatch):
    torch.manual_seed(3)
    model = BSMamba2(TINY).eval()
    spec = torch.randn(1, 2, 1025, 5, dtype=torch.complex64)
    with torch.no_grad():
        plain = model(spec)
    keys = [(k, v.shape) for k, v in model.state_dict().items()]
    names = [n for n, _ in model.named_parameters()]
    set_recompute(model, "cheap")
    assert [(k, v.shape) for k, v in model.state_dict().items()] == keys
    assert [n for n, _ in model.named_parameters()] == names

    def refuse(*args, **kwargs):
        raise AssertionError("checkpoint called without gradients")

    monkeypatch.setattr(recompute, "checkpoint", refuse)
    with torch.no_grad():
        torch.testing.assert_close(model(spec), plain, rtol=0, atol=0)
    with torch.inference_mode():
        torch.testing.assert_close(model(spec), plain, rtol=0, atol=0)
    with pytest.raises(ValueError, match="recompute='everything'"):
        set_recompute(model, "everything")


@needs_extra("train")
def test_option_through_module_and_cli(tmp_path, capsys):
    assert set(_modes(BSMamba2Module(net=TINY))) == {"mixer"}  # the default: every mixer
    module = BSMamba2Module(net=TINY, recompute="mixer", recompute_layers=1)
    assert _modes(module) == ["mixer"] * 4 + ["none"] * 4
    hparams = json.loads(json.dumps(module.hparams))
    assert (hparams["recompute"], hparams["recompute_layers"]) == ("mixer", 1)
    assert set(_modes(BSMamba2Module(net=TINY, recompute="none"))) == {"none"}
    with pytest.raises(BSMamba2Error, match="recompute_layers=-1"):
        BSMamba2Module(net=TINY, recompute_layers=-1)

    recipe = ROOT / "recipes/musdb18hq/bsmamba2.yaml"
    assert yaml.safe_load(recipe.read_text())["model"]["recompute"] == "cheap"

    def printed(*args: str) -> dict:
        with pytest.raises(SystemExit) as exit_info:
            main(["train", "--config", *args, "--print_config"])
        assert exit_info.value.code == 0
        return yaml.safe_load(capsys.readouterr().out)

    model = printed(str(recipe))["model"]
    assert (model["recompute"], model["recompute_layers"]) == ("cheap", 5)
    overridden = printed(str(recipe), "--model.recompute", "none", "--model.recompute_layers", "null")
    assert (overridden["model"]["recompute"], overridden["model"]["recompute_layers"]) == ("none", None)
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(overridden))
    again = printed(str(saved))["model"]  # the round trip
    assert (again["recompute"], again["recompute_layers"]) == ("none", None)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(recipe), "--model.recompute", "everything", "--print_config"])
    assert exit_info.value.code != 0


def test_gpu_train_memory_tool_runs_on_cpu(tmp_path, capsys, monkeypatch):
    script = ROOT / "tools/gpu_train_memory.py"
    spec = importlib.util.spec_from_file_location("gpu_train_memory", script)
    tool = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, tool)
    spec.loader.exec_module(tool)
    out = tmp_path / "memory.json"
    tool.main(["--config", str(ROOT / "configs/bsmamba2-small.yaml"), "--seconds", "0.25", "--device", "cpu",
               "--precision", "fp32", "--batch-size", "1", "--warmup", "0", "--steps", "1",
               "--modes", "mixer,mixer:1,none", "--json", str(out)])
    result = json.loads(out.read_text())
    rows = result["results"]
    assert [r["recompute"] for r in rows] == ["mixer", "mixer:1", "none"]
    assert all(r["median_ms"] > 0 and r["peak_gb"] is None for r in rows)
    losses = [r["losses"][0] for r in rows]  # the same seed: the same first loss, whatever the setting
    assert losses[0] > 0 and losses == pytest.approx([losses[0]] * len(rows), rel=1e-5)
    assert result["meta"]["precision"] == "fp32" and "recompute" in capsys.readouterr().out
