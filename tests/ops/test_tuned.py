"""Known-best kernel configurations (bsmamba2.ops.triton.tuned): how a call is looked up, and
that a kernel launched with a listed configuration, past the autotuner, computes the same."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from bsmamba2.ops import reference
from bsmamba2.ops.triton import common, conv, norm, tuned
from tests.helpers.kernels import DEVICE, assert_close


def test_call_key_spells_the_autotune_key_and_dtype():
    x = torch.zeros(2, 3, 5, dtype=torch.bfloat16)
    key = tuned.call_key(conv._conv_fwd, (x, x, x, x, 3, 5, 4), {"W": 4, "HAS_BIAS": True, "SILU": False})
    assert key == "Dc=5,W=4,L_BUCKET=4,HAS_BIAS=True,SILU=False|torch.bfloat16"
    assert tuned.kernel_name(conv._conv_fwd) == "_conv_fwd"
    assert tuned.kernel_name(norm._norm_fwd) == "_norm_fwd"  # under its heuristics


def test_lookup_by_device_kernel_and_key(monkeypatch):
    monkeypatch.setattr(tuned, "KNOWN_BEST", {"GPU X": {"_conv_fwd": {"k|torch.float32": (2, 1, {"A": 1})}}})
    assert tuned.lookup("GPU X", "_conv_fwd", "k|torch.float32") == (2, 1, {"A": 1})
    for device, kernel, key in (("GPU Y", "_conv_fwd", "k|torch.float32"), ("GPU X", "_norm_fwd", "k|torch.float32"),
                                ("GPU X", "_conv_fwd", "k|torch.bfloat16")):
        assert tuned.lookup(device, kernel, key) is None


def test_no_known_config_for_cpu_tensors_or_when_autotune_forced(monkeypatch):
    x = torch.zeros(4)
    assert tuned.known_config(conv._conv_fwd, (x,), {}) is None
    monkeypatch.setenv("BSMAMBA2_AUTOTUNE", "1")
    assert tuned.autotune_forced()
    assert tuned.known_config(conv._conv_fwd, (x,), {}) is None


@pytest.mark.parametrize(("op", "config"), [
    ("conv", (4, 1, {"BLOCK_L": 8, "BLOCK_D": 32, "TILES": 4})),
    ("norm", (2, 1, {"ELEMS": 128})),
])
def test_kernel_launched_with_a_listed_config_matches_reference(monkeypatch, op, config):
    used = []

    def listed(kernel, args, kwargs):
        used.append(tuned.kernel_name(kernel))
        return config if tuned.kernel_name(kernel).endswith("_fwd") else None

    monkeypatch.setattr(common, "known_config", listed)
    kernel = getattr(conv if op == "conv" else norm, f"_{op}_fwd")

    def autotuner_run(*args, **kwargs):
        raise AssertionError("a listed configuration went through the autotuner")

    monkeypatch.setattr(kernel, "run", autotuner_run)
    torch.manual_seed(0)
    x = torch.randn(2, 37, 40, device=DEVICE)
    with torch.no_grad():
        if op == "conv":
            w, b = torch.randn(40, 4, device=DEVICE), torch.randn(40, device=DEVICE)
            got = conv.causal_conv1d(x, w, b, "silu")
            want = reference.conv.causal_conv1d(x.double(), w.double(), b.double(), "silu")
        else:
            z, w = torch.randn_like(x), torch.rand(40, device=DEVICE) + 0.5
            got = norm.gated_rms_norm(x, z, w, 1e-5, 20)
            want = reference.norm.gated_rms_norm(x.double(), z.double(), w.double(), 1e-5, 20)
    assert used == [f"_{op}_fwd"]
    assert_close("out", got, want, torch.float32)


def test_every_listed_config_names_a_kernel_its_key_and_its_meta_parameters():
    """A stale table (a kernel renamed, its autotune key or meta-parameters changed) is caught
    here rather than silently autotuning or failing to launch on the GPU it lists."""
    from bsmamba2.ops.triton import ssd

    kernels = {tuned.kernel_name(k): k for m in (ssd, conv, norm) for k in vars(m).values()
               if hasattr(k, "keys") and hasattr(k, "configs")}
    assert tuned.KNOWN_BEST
    for device, table in tuned.KNOWN_BEST.items():
        for name, entries in table.items():
            kernel = kernels[name]
            for key, (warps, stages, meta) in entries.items():
                names = [part.split("=")[0] for part in key.split("|")[0].split(",")]
                assert names == list(kernel.keys), (device, name, key)
                assert key.split("|")[1] in ("torch.float32", "torch.float16", "torch.bfloat16")
                assert set(meta) <= set(kernel.arg_names), (device, name, meta)
                assert warps in (1, 2, 4, 8, 16) and 1 <= stages <= 8



class _RecordingKernel:
    """Stands in for an autotuned kernel: records how many of its launches overlap in time."""

    def __init__(self) -> None:
        self.running = self.most = 0
        self.guard = threading.Lock()

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            with self.guard:
                self.running += 1
                self.most = max(self.most, self.running)
            time.sleep(0.02)
            with self.guard:
                self.running -= 1
        return run


class _MeetingKernel:
    """A kernel whose launch returns only once another launch is inside its own."""

    def __init__(self, barrier: threading.Barrier) -> None:
        self.barrier = barrier

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.barrier.wait()


def test_autotuned_launches_of_one_kernel_take_turns_across_threads():
    """Triton's autotuner is not thread-safe (the warm-up's threads once read a half-filled
    entry on a GPU without a listed config): ``launch`` lets one thread at a time through a
    kernel's autotuner, while two different kernels still launch at the same time."""
    x = torch.randn(4)
    kernel = _RecordingKernel()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: common.launch(kernel, (1,), x), range(8)))
    assert kernel.most == 1

    barrier = threading.Barrier(2, timeout=10)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(common.launch, _MeetingKernel(barrier), (1,), x) for _ in range(2)]
        for future in futures:
            future.result()  # a BrokenBarrierError here: the two kernels were serialised
