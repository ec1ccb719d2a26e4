"""Helpers shared by the Triton kernels: interpreter detection, launch configs, math."""

from __future__ import annotations

import math
import threading

import torch
import triton
import triton.language as tl

from bsmamba2.ops.backend import triton_interpreter
from bsmamba2.ops.triton.tuned import known_config

INTERPRET = triton_interpreter()
"""Kernels run in Triton's CPU interpreter (decided at import time, as Triton does)."""

TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}

FAST = tl.constexpr(not INTERPRET)
"""Compiled for a GPU: PTX for the exponential, the reciprocal and the lane exchanges (the
interpreter runs Triton's own operations instead)."""
LOG2E = tl.constexpr(1.4426950408889634)


def dot_dtype(dtype: torch.dtype):
    """Operand dtype of tl.dot: the input dtype on a GPU (tensor cores, fp32 accumulation);
    float32 in the interpreter, whose bf16/fp16 dots return garbage."""
    if dtype not in TL_DTYPES:
        raise TypeError(f"Triton kernels take float32, float16 or bfloat16 tensors, not {dtype}")
    return tl.float32 if INTERPRET else TL_DTYPES[dtype]


def configs(*specs: tuple, interpret: dict | None = None) -> list[triton.Config]:
    """Autotune candidates as (num_warps, num_stages[, meta]) tuples. The interpreter, where
    autotuning across several needs a GPU, gets one: ``interpret`` (a meta dict), or the first."""
    if INTERPRET:
        return [triton.Config(interpret if interpret is not None else (specs[0][2:] or ({},))[0])]
    return [triton.Config(*(spec[2:] or ({},)), num_warps=spec[0], num_stages=spec[1]) for spec in specs]


_AUTOTUNER_LOCKS: dict[int, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


def _autotuner_lock(kernel) -> threading.Lock:
    """One lock per autotuned kernel: Triton's ``Autotuner`` keeps its timings and its
    per-key choice in shared dicts without a lock, so two threads tuning one kernel at once
    (the separator's warm-up compiles in threads) can read an entry the other has not
    filled yet (``'NoneType' object is not a mapping``)."""
    with _LOCKS_LOCK:
        return _AUTOTUNER_LOCKS.setdefault(id(kernel), threading.Lock())


def launch(kernel, grid, *args, **kwargs) -> None:
    """``kernel[grid](*args, **kwargs)`` for an autotuned kernel, with the configuration known
    best on this GPU model for this call when :mod:`bsmamba2.ops.triton.tuned` lists one (one
    compile, no timing runs), else through the autotuner, one thread at a time per kernel."""
    config = known_config(kernel, args, kwargs)
    if config is None:
        with _autotuner_lock(kernel):
            kernel[grid](*args, **kwargs)
    else:
        warps, stages, meta = config
        kernel.fn[grid](*args, **kwargs, **meta, num_warps=warps, num_stages=stages)


def backward_ahead(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd records the op for a backward: grad mode on and an input requiring
    grad. Asked before ``Function.apply``: inside ``forward`` grad mode is always off, and
    ``ctx.needs_input_grad`` follows ``requires_grad`` alone, which parameters keep under
    ``no_grad`` and ``inference_mode`` (a forward that stored its states for the backward on
    that ground would hold them through every inference pass)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def along(reverse: bool, *tensors: torch.Tensor) -> tuple[list[torch.Tensor], list[int]]:
    """Pointers and strides of (batch, steps, ...) tensors for a kernel that walks the steps
    t = 0, 1, ...: the tensors and their strides as they are, or with ``reverse`` a view
    starting at the last step and the step stride negated, so that the kernel's step t is
    step L − 1 − t: the kernel runs over the reversed sequences without a flipped copy."""
    if not reverse:
        return list(tensors), [s for t in tensors for s in t.stride()]
    strides = []
    for t in tensors:
        s = list(t.stride())
        s[1] = -s[1]
        strides += s
    return [t[:, -1:] for t in tensors], strides


def block(n: int, least: int = 16) -> int:
    """The power-of-two tile covering n (at least ``least``: tl.dot needs 16)."""
    return max(least, triton.next_power_of_2(n))


@triton.jit
def mufu(x, PTX: tl.constexpr):
    """One fp32 PTX instruction ``PTX`` (``"op $0, $1;"``) on each element of ``x``: the GPU's
    special-function unit without the range handling Triton's own functions wrap around it."""
    return tl.inline_asm_elementwise(PTX, "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def exp2(x):
    """2^x in fp32; on a GPU the flush-to-zero form (one MUFU.EX2: the default ex2 scales
    denormal inputs and outputs around it, three instructions more per exponential; results
    below 1.2e-38, decays and gates that vanish anyway, become 0)."""
    if FAST:
        return mufu(x, "ex2.approx.ftz.f32 $0, $1;")
    else:
        return tl.exp2(x)


@triton.jit
def exp(x):
    """e^x in fp32: ``tl.exp``'s own 2^{x·log2 e}, without its denormal scaling (:func:`exp2`)."""
    return exp2(x * LOG2E)


@triton.jit
def rcp(x):
    """1/x in fp32; on a GPU one MUFU.RCP (``rcp.approx.ftz``, within 1 ulp: Triton's division
    adds range checks and scaling, about six instructions more)."""
    if FAST:
        return mufu(x, "rcp.approx.ftz.f32 $0, $1;")
    else:
        return 1.0 / x


@triton.jit
def sigmoid(u):
    """1 / (1 + e^−u) by :func:`exp` and :func:`rcp` (e^−u = inf gives 0)."""
    return rcp(1.0 + exp(-u))


@triton.jit
def softplus(u):
    """log(1 + e^u), accurate for every u (log1p through the (1+v)-1 correction)."""
    v = exp(-tl.abs(u))
    w = 1.0 + v
    log1p = tl.where(w == 1.0, v, tl.log(w) * (v * rcp(w - 1.0)))
    return tl.maximum(u, 0.0) + log1p


@triton.jit
def cumsum_grad(dcs, dcs_last):
    """The gradient of the terms a_k of a chunk's cumulative sums cs_t = Σ_{k≤t} a_k and of
    its total cs_last = Σ_k a_k, from theirs: da_k = Σ_{t≥k} dcs_t + dcs_last."""
    return tl.sum(dcs, 0) - tl.cumsum(dcs, 0) + dcs + dcs_last


_PIO2_HI = tl.constexpr(torch.tensor(math.pi / 2, dtype=torch.float32).item())
_PIO2_LO = tl.constexpr(math.pi / 2 - _PIO2_HI.value)
_TWO_OVER_PI = tl.constexpr(2 / math.pi)


@triton.jit
def sincos(x):
    """sin x and cos x of fp32 x from one argument reduction: x = k·π/2 + r, |r| ≲ π/4, with
    π/2 as two fp32 constants and fused multiply-adds (r to about 1e-7 absolute for every |x|
    below 2^20), then the Taylor polynomials of degree 9 (sin r) and 10 (cos r), whose first
    omitted terms are below 2e-9, and the quadrant k mod 4 choosing and negating them. As
    accurate as libdevice's sinf/cosf where the scan's angles live, in half their work (one
    reduction for both, no slow path for huge arguments)."""
    k = tl.floor(x * _TWO_OVER_PI + 0.5)
    r = tl.fma(k, -_PIO2_HI, x)
    r = tl.fma(k, -_PIO2_LO, r)
    r2 = r * r
    s = r + r * r2 * (-1.0 / 6 + r2 * (1.0 / 120 + r2 * (-1.0 / 5040 + r2 * (1.0 / 362880))))
    c = 1.0 - 0.5 * r2 + r2 * r2 * (1.0 / 24 + r2 * (-1.0 / 720 + r2 * (1.0 / 40320 + r2 * (-1.0 / 3628800))))
    quadrant = k.to(tl.int32) & 3
    sin = tl.where(quadrant == 0, s, tl.where(quadrant == 1, c, tl.where(quadrant == 2, -s, -c)))
    cos = tl.where(quadrant == 0, c, tl.where(quadrant == 1, -s, tl.where(quadrant == 2, -c, s)))
    return sin, cos
