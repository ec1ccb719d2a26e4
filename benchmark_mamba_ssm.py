#!/usr/bin/env python
"""Benchmark the Mamba-2 (and Mamba-1, Mamba-3) layers of BSMamba2 across kernel backends.

Levels: op (SSD scan, the Mamba-1 selective scan and the Mamba-3 scan, SISO and MIMO rank 4,
on the time and band axes, causal conv1d, gated RMSNorm; forward and forward+backward), block
(one bidirectional block on each axis, forward+backward) and model (a training step of batch
5 × 8 s, separating 60 s of stereo audio in one pass), for each mixer of ``--mixers``.
Backends: ``triton`` (our kernels), ``torch`` (the PyTorch reference) and, when importable,
``mamba_ssm`` / ``causal_conv1d`` (op level; mamba_ssm's ``selective_scan_fn`` needs its CUDA
extension). Prints a table (median ms, speed-up over
``torch``, achieved GB/s and TFLOP/s and their share of the card's measured peaks) and
writes JSON.

    python benchmark_mamba_ssm.py                      # paper shapes, bf16, on the GPU
    python benchmark_mamba_ssm.py --device cpu --quick # smoke run (fallback only)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from bsmamba2 import ops
from bsmamba2.model import BSMamba2, BSMamba2Config, istft, stft
from bsmamba2.model.blocks import BidirectionalMamba
from bsmamba2.model.mixers import SHARED_OPTIONS, mixer_defaults

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# name: (batch·bands for the time axis, frames, batch·frames for the band axis, bands, config)
SHAPES = {
    "paper": dict(time=(5 * 62, 801), band=(5 * 801, 62), cfg=BSMamba2Config(),
                  train_batch=5, train_seconds=8.0, sep_seconds=60.0),
    "small": dict(time=(2 * 62, 101), band=(2 * 101, 62),
                  cfg=BSMamba2Config(dim=32, depth=1, expand=2, headdim=16, d_state=16),
                  train_batch=1, train_seconds=1.0, sep_seconds=2.0),
    "tiny": dict(time=(62, 24), band=(24, 62),
                 cfg=BSMamba2Config(dim=16, depth=1, expand=2, headdim=16, d_state=8),
                 train_batch=1, train_seconds=0.1, sep_seconds=0.2),
}


@dataclass
class Row:
    level: str
    name: str
    backend: str
    ms: float | None = None
    speedup: float | None = None
    gbps: float | None = None
    tflops: float | None = None
    peak_gb: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)


class Timer:
    """Median time of a callable. On a GPU the calls are queued back to back, each between two
    CUDA events, as kernels run in a model: the GPU time of one call, without the CPU's launch
    latency that a synchronisation after every call would add (as triton.testing.do_bench).
    On a CPU, perf_counter around each call."""

    def __init__(self, device: torch.device, quick: bool) -> None:
        self.cuda = device.type == "cuda"
        self.warmup, self.reps = (1, 2) if quick else (3, 15)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        for _ in range(self.warmup):
            fn()
        self.sync()
        # Slow calls (the PyTorch fallback) get fewer repetitions: at least 3, ~5 s in all.
        each = (time.perf_counter() - start) / self.warmup
        reps = max(min(3, self.reps), min(self.reps, int(5.0 / max(each, 1e-9))))
        if self.cuda:
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(reps)]
            for start, end in events:
                start.record()
                fn()
                end.record()
            torch.cuda.synchronize()
            return statistics.median(start.elapsed_time(end) for start, end in events)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def measure_peaks(device: torch.device) -> dict[str, float]:
    """The card's copy bandwidth (GB/s, read + write) and bf16 matmul rate (TFLOP/s)."""
    if device.type != "cuda":
        return {}
    timer = Timer(device, quick=False)
    src = torch.empty(2**30, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn_like(a)
    mm = timer(lambda: a @ b)
    return {"copy_gbps": 2 * 2**30 / ms / 1e6, "bf16_tflops": 2 * 8192**3 / mm / 1e9}


# ---- operation inputs -------------------------------------------------------------------


def ssd_inputs(seqs: int, length: int, cfg: BSMamba2Config, device, dtype, grad: bool):
    h, p, n = cfg.nheads, cfg.headdim, cfg.d_state
    g = cfg.ngroups
    # Model layout: x, B, C are views of one conv output; dt a slice of in_proj's output.
    xbc = torch.randn(seqs, length, h * p + 2 * g * n, device=device, dtype=dtype)
    x, B, C = torch.split(xbc, [h * p, g * n, g * n], -1)
    x, B, C = (t.detach().requires_grad_(grad) for t in (x.reshape(seqs, length, h, p),
                                                        B.reshape(seqs, length, g, n),
                                                        C.reshape(seqs, length, g, n)))
    dt = (torch.randn(seqs, length, h, device=device, dtype=dtype) - 2).requires_grad_(grad)
    A = (-torch.rand(h, device=device) * 15 - 1).requires_grad_(grad)
    D = torch.ones(h, device=device, requires_grad=grad)
    bias = torch.randn(h, device=device).requires_grad_(grad)
    return (x, dt, A, B, C, D), dict(dt_bias=bias, dt_softplus=True)


def ssd_cost(seqs: int, length: int, cfg: BSMamba2Config, elt: int, bwd: bool) -> tuple[float, float]:
    """(bytes, flops) of the SSD scan: each input read and output written once; the flops of
    the chunked form with 64-step chunks (backward counted as 3× the forward)."""
    h, p, n, g = cfg.nheads, cfg.headdim, cfg.d_state, cfg.ngroups
    q = min(64, length)
    chunks = seqs * math.ceil(length / q)
    io = seqs * length * (2 * h * p + h + 2 * g * n) * elt
    flops = chunks * (g * 2 * q * q * n + h * (2 * q * q * p + 4 * q * n * p))
    return (io * 2.5, flops * 4) if bwd else (io, flops)


def mamba3_inputs(seqs: int, length: int, cfg: BSMamba2Config, rank: int, device, dtype, grad: bool,
                  chunk: int | None = None):
    """The Mamba-3 scan's arguments as the layer makes them (official layouts), SISO or MIMO;
    ``chunk``: the scan's chunk_size (None: its default)."""
    h, p, n, g = cfg.nheads, cfg.headdim, cfg.d_state, cfg.ngroups
    qk = (seqs, length, g, n) if rank == 1 else (seqs, length, rank, g, n)
    bias = (h, n) if rank == 1 else (h, rank, n)

    def leaf(*shape, scale=1.0, shift=0.0, dt=dtype):
        return (torch.randn(shape, device=device, dtype=dt) * scale + shift).requires_grad_(grad)

    dt = torch.nn.functional.softplus(torch.randn(seqs, h, length, device=device) - 2).requires_grad_(grad)
    adt = (-torch.rand(seqs, h, length, device=device) * 2 * dt.detach()).requires_grad_(grad)
    f32 = torch.float32
    args = (leaf(*qk), leaf(*qk), leaf(seqs, length, h, p), adt, dt, leaf(seqs, h, length, dt=f32),
            leaf(*bias, scale=0.5, shift=1.0, dt=f32), leaf(*bias, scale=0.5, shift=1.0, dt=f32),
            leaf(seqs, length, h, n // 4, dt=f32), leaf(h, dt=f32), leaf(seqs, length, h, p))
    kw = {} if rank == 1 else {f"mimo_{w}": leaf(h, rank, p, scale=0.3, shift=1.0, dt=f32) for w in "xzo"}
    return args, {**kw, "chunk_size": chunk} if chunk else kw


def selective_scan_inputs(seqs: int, length: int, d: int, n: int, device, dtype, grad: bool):
    """The Mamba-1 mixer's layout: u, Δ, z channel-last (b, l, d) tensors as (b, d, l) views, B
    and C slices of x_proj's output; A, D and the Δ bias in fp32. Returns (args, leaves)."""
    leaf = functools.partial(torch.Tensor.requires_grad_, requires_grad=grad)
    u, z = (leaf(torch.randn(seqs, length, d, device=device, dtype=dtype)).transpose(1, 2) for _ in range(2))
    delta = leaf(torch.randn(seqs, length, d, device=device, dtype=dtype) * 0.5 - 2).transpose(1, 2)
    bc = torch.randn(seqs, length, 2 * n, device=device, dtype=dtype)
    B, C = (leaf(t.detach()).transpose(1, 2) for t in bc.split(n, -1))
    A = leaf(-torch.arange(1, n + 1, device=device, dtype=torch.float32).repeat(d, 1))
    D = leaf(torch.ones(d, device=device))
    bias = leaf(torch.randn(d, device=device) * 0.1)
    args = (u, delta, A, B, C, D, z, bias)
    return args, args


def op_cases(shapes: dict, cfg: BSMamba2Config, device, dtype, mamba3_chunk: int | None = None):
    """(name, make_inputs(grad) -> (fn, args), bytes_fwd, flops_fwd, bytes_bwd, flops_bwd)."""
    elt = torch.tensor([], dtype=dtype).element_size()
    cases = []
    m1 = BSMamba2Config(mixer="mamba", dim=cfg.dim, expand=cfg.expand)  # d_state 16
    for axis in ("time", "band"):
        seqs, length = shapes[axis]

        def make_scan(grad, seqs=seqs, length=length):
            args, leaves = selective_scan_inputs(seqs, length, m1.d_inner, m1.d_state, device, dtype, grad)
            return (lambda impl: impl.selective_scan(*args, delta_softplus=True)), leaves

        # bytes: u, Δ, z, out (d channels) and B, C (n) once per step; no flops figure (the
        # bound is one exponential per step, channel and state).
        io = seqs * length * (4 * m1.d_inner + 2 * m1.d_state) * elt
        cases.append((f"selective_scan {axis} ({seqs}×{length}, d {m1.d_inner}, n {m1.d_state})", make_scan,
                      (io, None), (2.5 * io, None)))
    for axis in ("time", "band"):
        seqs, length = shapes[axis]

        def make(grad, seqs=seqs, length=length):
            args, kw = ssd_inputs(seqs, length, cfg, device, dtype, grad)
            return (lambda impl: impl.ssd_scan(*args, **kw)), args

        cases.append((f"ssd_scan {axis} ({seqs}×{length})", make,
                      ssd_cost(seqs, length, cfg, elt, False), ssd_cost(seqs, length, cfg, elt, True)))
    for rank in (1, 4):
        for axis in ("time", "band"):
            seqs, length = shapes[axis]

            def make3(grad, seqs=seqs, length=length, rank=rank):
                args, kw = mamba3_inputs(seqs, length, cfg, rank, device, dtype, grad, mamba3_chunk)
                weights = [v for v in kw.values() if isinstance(v, torch.Tensor)]
                return (lambda impl: impl.mamba3_scan(*args, **kw)), (*args, *weights)

            kind = "SISO" if rank == 1 else f"MIMO r{rank}"
            cases.append((f"mamba3_scan {kind} {axis} ({seqs}×{length})", make3, None, None))
    seqs, length = shapes["time"]
    ch = cfg.d_inner + 2 * cfg.ngroups * cfg.d_state
    conv_elems = seqs * length * ch

    def make_conv(grad):
        x = torch.randn(seqs, length, ch, device=device, dtype=dtype, requires_grad=grad)
        w = torch.randn(ch, cfg.d_conv, device=device, requires_grad=grad)
        b = torch.randn(ch, device=device, requires_grad=grad)
        return (lambda impl: impl.causal_conv1d(x, w, b, "silu")), (x, w, b)

    cases.append((f"causal_conv1d ({ch} ch, {seqs}×{length})", make_conv,
                  (2 * conv_elems * elt, 2 * cfg.d_conv * conv_elems),
                  (5 * conv_elems * elt, 6 * cfg.d_conv * conv_elems)))
    norm_elems = seqs * length * cfg.d_inner

    def make_norm(grad):
        x = torch.randn(seqs, length, cfg.d_inner, device=device, dtype=dtype, requires_grad=grad)
        z = torch.randn_like(x, requires_grad=grad)
        w = torch.rand(cfg.d_inner, device=device, requires_grad=grad)
        return (lambda impl: impl.gated_rms_norm(x, z, w, 1e-5, None)), (x, z, w)

    cases.append((f"gated_rms_norm ({cfg.d_inner} ch, {seqs}×{length})", make_norm,
                  (3 * norm_elems * elt, 8 * norm_elems), (7 * norm_elems * elt, 20 * norm_elems)))
    return cases


def external_impl(name: str):
    """An adapter exposing mamba_ssm / causal_conv1d with our op signatures, or None."""
    if name != "mamba_ssm":
        return None
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception:
        return None

    class Adapter:
        @staticmethod
        def ssd_scan(x, dt, A, B, C, D, dt_bias, dt_softplus):
            return mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size=256, D=D, dt_bias=dt_bias,
                                             dt_softplus=dt_softplus)

    try:  # mamba_ssm's CUDA selective scan: an extension built only on request
        import selective_scan_cuda  # noqa: F401
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        Adapter.selective_scan = staticmethod(selective_scan_fn)
    except Exception:
        pass
    try:  # the official Mamba-3 SISO kernels (mamba_ssm from source; first call: minutes of autotuning)
        from mamba_ssm.ops.triton.mamba3.mamba3_siso_combined import mamba3_siso_combined

        def mamba3_scan(q, k, v, adt, dt, trap, q_bias, k_bias, angles, D, z, chunk_size=None, **mimo):
            if mimo:
                raise NotImplementedError("MIMO is the official TileLang kernel")
            return mamba3_siso_combined(q, k, v, adt, dt, trap, q_bias, k_bias, angles, D, z, chunk_size=64)

        Adapter.mamba3_scan = staticmethod(mamba3_scan)
    except Exception:
        pass
    try:
        from causal_conv1d import causal_conv1d_fn

        Adapter.causal_conv1d = staticmethod(
            lambda x, w, b, act: causal_conv1d_fn(x.transpose(1, 2), w, b, act).transpose(1, 2))
    except Exception:
        pass
    return Adapter


def run_ops(args, shapes, cfg, device, dtype, timer, peaks) -> list[Row]:
    rows = []
    for name, make, cost_f, cost_b in op_cases(shapes, cfg, device, dtype, args.mamba3_chunk):
        if args.ops and name.split()[0] not in args.ops:
            continue
        for bwd in (False, True):
            label = name + (" fwd+bwd" if bwd else " fwd")
            for be in args.backends:
                impl = ops if be in ("triton", "torch") else external_impl(be)
                op_name = name.split()[0]
                if impl is None or not hasattr(impl, op_name):
                    rows.append(Row("op", label, be, note="not available"))
                    continue
                fn, inputs = make(bwd)
                leaves = [t for t in inputs if t.requires_grad]

                # fwd+bwd: the op's forward and its backward to every input, the output's
                # gradient made beforehand (not timed), the input gradients returned rather
                # than copied into the leaves' .grad (strided views would be copied).
                def step(fn=fn, impl=impl, leaves=leaves, bwd=bwd, dy=None):
                    out = fn(impl)
                    if bwd:
                        torch.autograd.grad(out, leaves, dy)

                with ops.use_backend(be if be in ("triton", "torch") else "torch"):
                    if bwd:
                        with torch.no_grad():
                            step = functools.partial(step, dy=torch.randn_like(fn(impl)))
                    row = timed(Row("op", label, be), step, timer, cost_b if bwd else cost_f, peaks)
                if row.ms and op_name == "selective_scan":  # its bound: exponentials per second
                    exps = math.prod(inputs[2].shape) * inputs[0].shape[0] * inputs[0].shape[2]
                    row.extra["Gexp/s"] = round(exps * (2 if bwd else 1) / row.ms / 1e6)
                rows.append(row)
    return rows


def failure_note(exc: Exception) -> str:
    """A row's note for a step that raised: the exception's type and the first line of its
    message (an out-of-memory and a kernel error read differently)."""
    first_line = (str(exc).splitlines() or [""])[0]
    return f"failed: {type(exc).__name__}: {first_line[:80]}"


def timed(row: Row, step, timer: Timer, cost, peaks) -> Row:
    try:
        row.ms = timer(step)
    except Exception as exc:  # one failing backend must not hide the others' numbers
        row.note = failure_note(exc)
    else:
        if cost:
            row.gbps = cost[0] / row.ms / 1e6
            row.tflops = cost[1] / row.ms / 1e9 if cost[1] is not None else None
    print(f"  {row.level} {row.name} [{row.backend}]: {row.ms if row.ms is None else round(row.ms, 3)} ms "
          f"{row.note}", flush=True)  # progress, and what a killed run had measured
    return row


def mixer_configs(args, cfg: BSMamba2Config) -> list[tuple[str, BSMamba2Config]]:
    """(label suffix, config) per mixer of --mixers: the shape's config with that mixer (the
    shared options it has, e.g. not Mamba-2's d_conv for Mamba-3; its own at their defaults)."""
    out = []
    for name in args.mixers:
        own = mixer_defaults(name)
        data = {k: v for k, v in cfg.to_dict().items()
                if k != "mixer_options" and (k not in SHARED_OPTIONS or k in own)}
        if name == "mamba":  # Mamba-1's state is per channel: its own default (16), not Mamba-2's 128
            data.pop("d_state")
        suffix = "" if name == "mamba2" else f" [{name}]"
        if name == "mamba3" and args.mamba3_chunk:
            data["mixer_options"] = {"chunk_size": args.mamba3_chunk}
            suffix = f" [mamba3, chunk {args.mamba3_chunk}]"
        out.append((suffix, BSMamba2Config.from_dict({**data, "mixer": name})))
    return out


def run_blocks(args, shapes, base_cfg, device, dtype, timer, peaks) -> list[Row]:
    rows = []
    for suffix, cfg in mixer_configs(args, base_cfg):
        rows += block_rows(args, shapes, cfg, suffix, device, dtype, timer, peaks)
    return rows


def block_rows(args, shapes, cfg, suffix, device, dtype, timer, peaks) -> list[Row]:
    rows = []
    block = BidirectionalMamba(cfg).to(device)
    for axis in ("time", "band"):
        seqs, length = shapes[axis]
        x = torch.randn(seqs, length, cfg.dim, device=device, requires_grad=True)

        def step(x=x):
            with autocast(device, dtype):
                out = block(x)
            out.float().sum().backward()
            block.zero_grad(set_to_none=True)
            x.grad = None

        for be in args.backends:
            if be not in ("triton", "torch"):
                continue
            with ops.use_backend(be):
                name = f"bidirectional block {axis} ({seqs}×{length}) fwd+bwd{suffix}"
                rows.append(timed(Row("block", name, be), step, timer, None, peaks))
    return rows


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def run_model(args, shapes, base_cfg, device, dtype, timer, peaks) -> list[Row]:
    rows = []
    for suffix, cfg in mixer_configs(args, base_cfg):
        rows += model_rows(args, shapes, cfg, suffix, device, dtype, timer, peaks)
    return rows


def model_rows(args, shapes, cfg, suffix, device, dtype, timer, peaks) -> list[Row]:
    rows = []
    model = BSMamba2(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sr = cfg.sample_rate
    mix = torch.randn(shapes["train_batch"], 2, int(shapes["train_seconds"] * sr), device=device)
    target = torch.randn_like(mix)
    spec_mix = stft(mix, cfg)
    spec_target = stft(target, cfg)

    def train_step():
        with autocast(device, dtype):
            out = model(spec_mix)[:, 0]
        loss = (torch.view_as_real(out) - torch.view_as_real(spec_target)).abs().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    audio = torch.randn(2, int(shapes["sep_seconds"] * sr), device=device)

    def separate():
        with torch.inference_mode(), autocast(device, dtype):
            spec = stft(audio, cfg)[None]
            out = model(spec)[0, 0]
            return istft(out.to(spec.dtype), cfg, length=audio.shape[-1])

    secs = shapes["train_seconds"]
    # Separation first: on a fresh Triton cache its first call includes compiling the kernels.
    for name, step in ((f"separate {shapes['sep_seconds']:g} s stereo, one pass{suffix}", separate),
                       (f"training step, batch {shapes['train_batch']} × {secs:g} s{suffix}", train_step)):
        for be in args.backends:
            if be not in ("triton", "torch"):
                continue
            with ops.use_backend(be):
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                first = time.perf_counter()
                try:
                    step()
                    timer.sync()
                except Exception as exc:
                    rows.append(Row("model", name, be, note=failure_note(exc)))
                    continue
                first = time.perf_counter() - first
                print(f"  model {name} [{be}]: first call {first:.2f} s", flush=True)  # kept by a killed run
                row = timed(Row("model", name, be), step, timer, None, peaks)
                row.extra["first_call_s"] = round(first, 2)
                if device.type == "cuda":
                    row.peak_gb = torch.cuda.max_memory_allocated() / 1e9
                rows.append(row)
    return rows


def profile_ssd(args, shapes: dict, cfg: BSMamba2Config, device, dtype) -> None:
    """Per-kernel CUDA time of one forward+backward of each scan (SSD, and the Mamba-1
    selective scan when --ops asks for it) with our kernels, on each axis."""
    from torch.profiler import ProfilerActivity, profile

    for axis, op_name in [(a, o) for o in ("ssd_scan", "selective_scan") for a in ("time", "band")
                          if (args.ops is None and o == "ssd_scan") or (args.ops and o in args.ops)]:
        if op_name == "ssd_scan":
            inputs, kw = ssd_inputs(*shapes[axis], cfg, device, dtype, True)
            leaves = [*inputs, kw["dt_bias"]]
        else:
            inputs, leaves = selective_scan_inputs(*shapes[axis], cfg.expand * cfg.dim, 16, device, dtype,
                                                   True)
            kw = {"delta_softplus": True}
        with torch.no_grad():
            dy = torch.randn_like(getattr(ops, op_name)(*inputs, **kw))
        with ops.use_backend("triton"):
            for record in (False, True):  # the first call compiles and autotunes
                recorder = profile(activities=[ProfilerActivity.CUDA]) if record else contextlib.nullcontext()
                with recorder as prof:
                    torch.autograd.grad(getattr(ops, op_name)(*inputs, **kw), leaves, dy)  # as timed
                    torch.cuda.synchronize()
        print(f"{op_name} fwd+bwd, {axis} axis {shapes[axis]}:")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=8, max_name_column_width=40))


def fill_speedups(rows: list[Row]) -> None:
    base = {(r.level, r.name): r.ms for r in rows if r.backend == "torch" and r.ms}
    for r in rows:
        ref = base.get((r.level, r.name))
        if r.ms and ref:
            r.speedup = ref / r.ms


def table(rows: list[Row], peaks: dict) -> str:
    head = (f"{'level':<6} {'what':<58} {'backend':<9} {'ms':>9} {'×torch':>7} {'GB/s':>7} "
            f"{'TFLOP/s':>8} {'peak GB':>8}")
    lines = [head, "-" * len(head)]

    def fmt(v, spec):
        return format(v, spec) if v is not None else "-"

    for r in rows:
        line = (f"{r.level:<6} {r.name[:58]:<58} {r.backend:<9} {fmt(r.ms, '9.3f')} "
                f"{fmt(r.speedup, '7.1f')} {fmt(r.gbps, '7.0f')} {fmt(r.tflops, '8.1f')} "
                f"{fmt(r.peak_gb, '8.1f')}")
        if r.note or r.extra:
            line += "  " + " ".join([r.note] + [f"{k}={v}" for k, v in r.extra.items()]).strip()
        lines.append(line)
    if peaks:
        lines.append(f"card peaks (measured): copy {peaks['copy_gbps']:.0f} GB/s, "
                     f"bf16 matmul {peaks['bf16_tflops']:.0f} TFLOP/s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="bf16 on a GPU, fp32 on a CPU by default")
    parser.add_argument("--shapes", choices=sorted(SHAPES), default=None,
                        help="paper (default on a GPU), small (default on a CPU) or tiny (smoke tests)")
    parser.add_argument("--backends", default=None,
                        help="comma list of triton, torch, mamba_ssm (default: all usable here)")
    parser.add_argument("--levels", default="op,block,model", help="comma list of op, block, model")
    parser.add_argument("--json", default="benchmark_mamba_ssm.json", help="where to write the results")
    parser.add_argument("--mixers", default="mamba2",
                        help="comma list of mixers (mamba2, mamba, mamba3) for the block and model levels")
    parser.add_argument("--ops", default=None,
                        help="comma list of ops to time (ssd_scan, selective_scan, mamba3_scan, "
                        "causal_conv1d, gated_rms_norm; default: all)")
    parser.add_argument("--mamba3-chunk", type=int, default=None,
                        help="chunk_size (steps) of the Mamba-3 scan rows and mixers (default: theirs)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--profile", action="store_true",
                        help="also print the per-kernel CUDA time of one SSD fwd+bwd per axis (GPU)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    dtype = DTYPES[args.dtype or ("bf16" if on_gpu else "fp32")]
    shapes = SHAPES[args.shapes or ("paper" if on_gpu else "small")]
    default = ["triton", "torch", "mamba_ssm"] if on_gpu else ["torch"]
    args.backends = args.backends.split(",") if args.backends else default
    args.mixers = args.mixers.split(",")
    args.ops = args.ops.split(",") if args.ops else None
    for be in args.backends:
        if be == "triton":
            with ops.use_backend("triton"):
                try:  # a clear error instead of a silent fallback
                    ops.active_backend(device, dtype)
                except ops.KernelBackendError as error:
                    parser.error(str(error))
        elif be not in ("torch", "mamba_ssm"):
            parser.error(f"unknown backend {be!r}")
    cfg = shapes["cfg"]
    timer = Timer(device, args.quick)
    peaks = measure_peaks(device)
    rows: list[Row] = []
    levels = args.levels.split(",")
    for level, fn in (("op", run_ops), ("block", run_blocks), ("model", run_model)):
        if level in levels:
            rows += fn(args, shapes, cfg, device, dtype, timer, peaks)
            print(f"[{level} level done]", flush=True)
    fill_speedups(rows)
    print(table(rows, peaks))
    if args.profile and on_gpu:
        profile_ssd(args, shapes, cfg, device, dtype)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if on_gpu else platform.processor() or "cpu",
        "torch": torch.__version__, "triton": triton_version, "python": platform.python_version(),
        "dtype": str(dtype), "shapes": args.shapes or ("paper" if on_gpu else "small"),
        "peaks": peaks, "command": "python benchmark_mamba_ssm.py " + " ".join(argv or []),
    }
    tmp = args.json + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"meta": meta, "rows": [asdict(r) for r in rows]}, f, indent=1)
    os.replace(tmp, args.json)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
