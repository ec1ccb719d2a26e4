"""Our C selective scan for CPU inference (bsmamba2/ops/cpu/) vs the float64 step recurrence;
when it serves; its build, cache and fallback; tracing it with torch.compile."""

from __future__ import annotations

import logging
import platform
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from bsmamba2 import ops
from bsmamba2.model import Mamba
from bsmamba2.ops import KernelBackendError
from bsmamba2.ops.cpu import build
from bsmamba2.ops.cpu import selective as cpu
from bsmamba2.ops.reference import selective as reference
from tests.helpers.numerics import rel_err

TOL = {torch.float32: 1e-6, torch.bfloat16: 5e-3}
"""Relative L2 error vs the float64 oracle: float32 arithmetic throughout; bf16 inputs are
rounded to bf16 before both, so only the bf16 output's rounding (2^-9) is left."""
SHAPES = [(2, 37, 16, 1), (3, 6, 4, 2), (1, 64, 5, 4), (2, 32, 16, 2)]
"""(batch, channels, states, groups of B/C): 16 states is the kernel's unrolled path, other
counts its generic one; channels not a multiple of the 16 lanes (per group: 37, 3, 16, 16)."""


needs_cc = pytest.mark.skipif(build.compiler() is None, reason="no C compiler to build the kernel")


@pytest.fixture(autouse=True)
def _kernel(monkeypatch):
    """The C kernel, or an error saying why not (never a silent fallback in these tests)."""
    monkeypatch.setenv("BSMAMBA2_CPU_SCAN", "c")


def _inputs(b=2, d=37, length=50, n=16, g=1, dtype=torch.float32):
    """Fresh random inputs laid out as the Mamba-1 layer hands them in: u, delta, z (b, d, L)
    views of one channel-last tensor; B, C (b, g, n, L) views of another."""
    u, delta, z = (t.transpose(1, 2) for t in torch.randn(b, length, 3 * d, dtype=dtype).split(d, -1))
    B, C = (t.unflatten(-1, (g, n)).permute(0, 2, 3, 1)
            for t in torch.randn(b, length, 2 * g * n, dtype=dtype).split(g * n, -1))
    return dict(u=u, delta=delta * 0.5 - 1, A=-(torch.rand(d, n) * 4 + 0.5), B=B, C=C, D=torch.randn(d),
                z=z, delta_bias=torch.randn(d) * 0.5, initial_state=torch.randn(b, d, n))


def _run(fn, ins, softplus=True, **kw):
    return fn(ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"], ins.get("D"), ins.get("z"),
              ins.get("delta_bias"), softplus, initial_state=ins.get("initial_state"), **kw)


def _check(ins, softplus=True):
    """Output and final state of the C kernel vs the oracle, inputs left as they were."""
    before = {k: v.clone() for k, v in ins.items()}
    want, want_final = _run(reference.selective_scan_sequential, ins, softplus)
    with torch.inference_mode():
        out, final = _run(cpu.selective_scan, ins, softplus, return_final_state=True)
    dtype = ins["u"].dtype
    assert out.shape == ins["u"].shape and out.dtype == dtype and final.dtype == torch.float32
    assert rel_err(out, want) < TOL[dtype] and rel_err(final, want_final) < 2e-6
    for k, v in ins.items():
        assert torch.equal(v, before[k]), k


@needs_cc
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("length", [1, 7, 62, 63, 256, 801])
def test_matches_the_oracle(length, shape, dtype):
    b, d, n, g = shape
    _check(_inputs(b, d, length, n, g, dtype))


@needs_cc
@pytest.mark.parametrize("drop", ["D", "z", "delta_bias", "initial_state"])
def test_each_optional_input_can_be_left_out(drop):
    ins = _inputs(length=70)
    del ins[drop]
    _check(ins)


@needs_cc
def test_without_softplus_and_with_ungrouped_b_c():
    """Δ = delta + bias as given (positive), B and C as (batch, n, length)."""
    ins = _inputs(d=20, length=90)
    ins["delta"], ins["delta_bias"] = ins["delta"].abs() * 0.3, ins["delta_bias"].abs() * 0.1
    ins["B"], ins["C"] = ins["B"][:, 0], ins["C"][:, 0]
    _check(ins, softplus=False)


@needs_cc
def test_any_strides_and_mixed_dtypes():
    """Contiguous (b, d, L) tensors (the channels not contiguous), a float32 Δ with bf16 u and
    z: the output keeps u's dtype."""
    ins = _inputs(d=24, length=40, dtype=torch.bfloat16)
    ins = {k: v.contiguous() for k, v in ins.items()}
    ins["delta"] = ins["delta"].float()
    _check(ins)


@needs_cc
def test_extreme_decays_and_gates_stay_finite():
    """Decays past float32's range (ΔA ≪ −100), strong and negligible Δ, large gates: finite
    and as exact as the oracle."""
    ins = _inputs(d=16, length=64)
    ins["A"] = ins["A"] * torch.logspace(-3, 3, 16)[:, None]
    ins["delta"] = ins["delta"] * 30
    ins["z"] = ins["z"] * 40
    with torch.inference_mode():
        out = _run(cpu.selective_scan, ins)
    assert torch.isfinite(out).all()
    assert rel_err(out, _run(reference.selective_scan_sequential, ins)[0]) < TOL[torch.float32]


@needs_cc
@pytest.mark.parametrize("name,shape,match", [
    ("delta", (2, 16, 29), "delta must be"), ("A", (16, 5), "must be"), ("B,C", (2, 3, 4, 30), "groups"),
    ("C", (2, 4, 30), "C must be"), ("initial_state", (2, 16, 3), "initial_state must be"),
    ("D", (15,), "D must be")])
def test_bad_shapes_are_one_line_errors(name, shape, match):
    """The kernel reads by the shapes: a wrong one is a ValueError, never a read out of bounds."""
    ins = _inputs(d=16, length=30, n=4)
    for key in name.split(","):
        ins[key] = torch.randn(shape)
    with pytest.raises(ValueError, match=match), torch.no_grad():
        _run(cpu.selective_scan, ins)


@needs_cc
def test_scans_in_several_threads_at_once():
    """Scans called from 4 threads at once (a server's jobs; ctypes lets go of the GIL, each
    call runs its own OpenMP team of torch's 2 threads): every result as the oracle's."""
    cases = [_inputs(b=3, d=40, length=120) for _ in range(4)]
    wants = [_run(reference.selective_scan_sequential, ins)[0] for ins in cases]

    def scan(ins):
        with torch.inference_mode():
            return _run(cpu.selective_scan, ins)

    real = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with ThreadPoolExecutor(4) as pool:
            gots = list(pool.map(scan, cases))
    finally:
        torch.set_num_threads(real)
    for got, want in zip(gots, wants, strict=True):
        assert rel_err(got, want) < TOL[torch.float32]


@needs_cc
def test_dispatch_serves_inference_only(monkeypatch):
    """ops.selective_scan takes the C kernel when no gradient is needed, the reference (with
    its gradients) otherwise, and the reference for everything with BSMAMBA2_CPU_SCAN=torch."""
    calls, real = [], cpu._scan
    monkeypatch.setattr(cpu, "_scan", lambda *a: (calls.append(1), real(*a))[1])
    ins = _inputs(d=16, length=30)
    want, _ = _run(reference.selective_scan_sequential, ins)
    with torch.no_grad():
        assert rel_err(_run(ops.selective_scan, ins), want) < TOL[torch.float32]
    assert len(calls) == 1
    grad_ins = {k: v.clone().requires_grad_() for k, v in ins.items()}
    out = _run(ops.selective_scan, grad_ins)
    out.sum().backward()
    assert len(calls) == 1 and grad_ins["u"].grad is not None
    assert rel_err(out.detach(), want) < 1e-5
    monkeypatch.setenv("BSMAMBA2_CPU_SCAN", "torch")
    with torch.no_grad():
        _run(ops.selective_scan, ins)
    assert len(calls) == 1
    monkeypatch.setenv("BSMAMBA2_CPU_SCAN", "fast")
    with pytest.raises(KernelBackendError, match="BSMAMBA2_CPU_SCAN='fast'"), torch.no_grad():
        _run(ops.selective_scan, ins)


@pytest.fixture
def no_compiler(monkeypatch):
    """The build as on a machine without a C compiler (a test may name a failing one), the
    library and the fallback decision not yet cached in this process."""
    monkeypatch.setattr(build, "compiler", lambda: None)
    for cached in (cpu._library, cpu._fallback_reason):
        cached.cache_clear()
    yield
    for cached in (cpu._library, cpu._fallback_reason):
        cached.cache_clear()


def test_without_a_compiler_auto_falls_back_with_one_warning(no_compiler, monkeypatch, caplog):
    monkeypatch.setenv("BSMAMBA2_CPU_SCAN", "auto")
    ins = _inputs(d=8, length=20)
    want, _ = _run(reference.selective_scan_sequential, ins)
    with caplog.at_level(logging.WARNING, logger=cpu.__name__), torch.no_grad():
        for _ in range(2):
            assert rel_err(_run(ops.selective_scan, ins), want) < 1e-5
    warnings = [r for r in caplog.records if r.name == cpu.__name__]
    assert len(warnings) == 1 and "no C compiler found" in warnings[0].getMessage()


@pytest.mark.skipif(shutil.which("false") is None, reason="uses `false` as a compiler that fails")
def test_a_failing_build_falls_back_too(no_compiler, monkeypatch, tmp_path, caplog):
    """A compiler that fails (here `false`) is logged once, and the PyTorch scan serves."""
    monkeypatch.setattr(build, "compiler", lambda: shutil.which("false"))
    monkeypatch.setenv("BSMAMBA2_CACHE", str(tmp_path))
    monkeypatch.setenv("BSMAMBA2_CPU_SCAN", "auto")
    ins = _inputs(d=8, length=20)
    with caplog.at_level(logging.WARNING, logger=cpu.__name__), torch.no_grad():
        out = _run(ops.selective_scan, ins)
    assert rel_err(out, _run(reference.selective_scan_sequential, ins)[0]) < 1e-5
    (warning,) = [r.getMessage() for r in caplog.records if r.name == cpu.__name__]
    assert "false could not build selective.c" in warning


def test_without_a_compiler_c_is_an_error(no_compiler):
    with pytest.raises(build.BuildError, match="no C compiler found"), torch.no_grad():
        _run(ops.selective_scan, _inputs(d=8, length=5))


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or shutil.which("gcc") is None,
                    reason="the x86 instruction-set flags of gcc")
@pytest.mark.parametrize("flags", ["-mno-avx512f", "-mno-avx -mno-avx2 -mno-avx512f"], ids=["avx2", "sse"])
def test_the_avx2_and_plain_paths_match_the_oracle_too(no_compiler, monkeypatch, tmp_path, flags):
    """The kernel as built on a CPU without AVX-512 (its AVX branch) or without AVX (its plain C
    branch): gcc through a ``$CC``-style wrapper that turns those instruction sets off after
    ``-march=native``, so any x86 machine tests all three of selective.c's vector paths."""
    wrapper = tmp_path / "cc"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("gcc")} "$@" {flags}\n')
    wrapper.chmod(0o755)
    monkeypatch.setattr(build, "compiler", lambda: str(wrapper))
    monkeypatch.setenv("BSMAMBA2_CACHE", str(tmp_path))
    for length, (b, d, n, g) in [(63, SHAPES[0]), (256, SHAPES[1]), (7, SHAPES[3])]:
        _check(_inputs(b, d, length, n, g))
    _check(_inputs(*SHAPES[0][:2], 62, *SHAPES[0][2:], dtype=torch.bfloat16))
    assert len(list((tmp_path / "cpu-kernels").glob("*.so"))) == 1  # built here, with the flags


@needs_cc
def test_build_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("BSMAMBA2_CACHE", str(tmp_path))
    bad = tmp_path / "bad.c"
    bad.write_text("int f(void) { return nope; }\n")
    with pytest.raises(build.BuildError, match=r"could not build bad\.c: .*nope") as info:
        build.load_library(bad)
    assert "\n" not in str(info.value)
    assert not list((tmp_path / "cpu-kernels").iterdir())  # no temporary file left


@needs_cc
def test_builds_once_into_the_cache_also_when_racing(tmp_path, monkeypatch):
    """Two builds of one library at once (as two processes would) leave one working library;
    a later load finds it without compiling."""
    monkeypatch.setenv("BSMAMBA2_CACHE", str(tmp_path))
    source = tmp_path / "tiny.c"
    source.write_text("int twice(int x) { return 2 * x; }\n")
    cc = build.compiler()
    target = build._library_path(source, cc)
    threads = [threading.Thread(target=build._compile, args=(source, cc, target)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [p.name for p in target.parent.iterdir()] == [target.name]
    compiled = []
    monkeypatch.setattr(build, "_compile", lambda *a: compiled.append(a))
    assert build.load_library(source).twice(21) == 42 and not compiled


@needs_cc
def test_traces_as_one_op_under_torch_compile():
    """The custom op's schema and fake implementation (torch.library.opcheck), and a whole
    Mamba layer traced without a graph break, equal to the eager layer."""
    ins = _inputs(b=2, d=16, length=9)
    args = [ins[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
    torch.library.opcheck(cpu._scan_op, (*args, True, ins["initial_state"]),
                          test_utils=("test_schema", "test_faketensor"))
    layer = Mamba(16).eval()
    x = torch.randn(2, 12, 16)
    with torch.no_grad():
        want = layer(x)
        got = torch.compile(layer, backend="aot_eager", fullgraph=True)(x)
    assert torch.equal(got, want)
