"""The kernel warm-up before the first segment: every kernel-launching op a segment meets in
the model is called, in worker threads, on tensors of the layout, dtype and flags of the
real forward's (what decides which kernel variant compiles); nothing in the model changes;
an error there is raised to the caller."""

from __future__ import annotations

import threading

import pytest
import torch

from bsmamba2 import BSMamba2, ops
from bsmamba2.model.config import BSMamba2Config
from bsmamba2.separation.warmup import warm_up
from tests.helpers.configs import MICRO
from tests.helpers.models import MaskModel

CPU = torch.device("cpu")
SEGMENT = 4410
LAUNCHING = ("causal_conv1d", "ssd_scan", "gated_rms_norm")


def _signature(value: object) -> object:
    """What selects a kernel variant: a tensor's shape past the batch, strides, dtype (and
    flags); the batch size is the warm-up's own (one sequence)."""
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape[1:]), value.stride(), value.dtype)
    return value


def _calls(monkeypatch, run) -> list[tuple]:
    """(op, thread, signature) of each kernel-launching op called during ``run()``."""
    seen = []
    for name in LAUNCHING:
        original = getattr(ops, name)

        def recorder(*args, _name=name, _original=original, **kwargs):
            signature = tuple(_signature(a) for a in args) + tuple(sorted((k, _signature(v))
                                                                          for k, v in kwargs.items()))
            seen.append((_name, threading.current_thread().name, signature))
            return _original(*args, **kwargs)

        monkeypatch.setattr(ops, name, recorder)
    run()
    monkeypatch.undo()
    return seen


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_every_kernel_a_segment_meets_is_called_in_a_thread_as_the_forward_calls_it(monkeypatch, precision):
    torch.manual_seed(0)
    model = BSMamba2(MICRO).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # Two segments: a batch of one hands the time axis a transposed view instead of a copy.
    spec = torch.randn(2, MICRO.channels, sum(MICRO.bands), SEGMENT // MICRO.hop_length + 1,
                       dtype=torch.complex64)
    with torch.inference_mode():
        want = model(spec)

    def forward():
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            model(spec)

    real = _calls(monkeypatch, forward)
    warm = _calls(monkeypatch, lambda: warm_up(model, SEGMENT, precision, CPU))
    assert {(op, sig) for op, _, sig in warm} == {(op, sig) for op, _, sig in real}
    assert all(thread.startswith("bsmamba2-warmup") for _, thread, _ in warm)
    assert {op for op, _, _ in warm} == set(LAUNCHING)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    with torch.inference_mode():
        assert torch.equal(model(spec), want)


def test_a_mixer_without_stages_runs_its_whole_blocks_in_threads():
    model = BSMamba2(BSMamba2Config(dim=8, depth=1, mixer="mamba", expand=2, d_state=4, mask_mlp_expansion=1))
    threads = []
    for bidirectional in model.layers[0]:
        for block in (bidirectional.forward_blocks[0], bidirectional.backward_blocks[0]):
            block.register_forward_pre_hook(lambda module, args: threads.append(threading.current_thread().name))
    warm_up(model.eval(), SEGMENT, "fp32", CPU)
    assert len(threads) == 4 and all(t.startswith("bsmamba2-warmup") for t in threads)


def test_an_error_in_a_warm_up_thread_is_raised_and_a_model_without_layers_is_left_alone():
    model = BSMamba2(MICRO).eval()

    def broken(module, args):
        raise RuntimeError("Triton compile failed: out of resources")

    model.layers[0][1].backward_blocks[0].mixer.norm.register_forward_pre_hook(broken)
    with pytest.raises(RuntimeError, match="out of resources"):
        warm_up(model, SEGMENT, "fp32", CPU)
    warm_up(MaskModel(), SEGMENT, "fp32", CPU)  # no layers: nothing to run
