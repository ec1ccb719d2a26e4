"""``Separator(compile=True)`` / ``--compile``: torch.compile of the Mamba-2 modules on the CPU
gives the eager results (to float32 rounding) and leaves the weights' names alone."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from bsmamba2 import BSMamba2, Separator, save_model
from bsmamba2.cli.main import main
from bsmamba2.errors import BSMamba2Error
from bsmamba2.separation import compiling
from bsmamba2.separation import engine as engine_module
from bsmamba2.separation.compiling import compile_blocks, compile_pays
from bsmamba2.separation.engine import AutoCompile
from tests.helpers.configs import TINY


def separate_compiled(backend: str) -> None:
    """Eager against compiled separation of the same audio, float32."""
    torch.manual_seed(0)
    model = BSMamba2(TINY)
    keys = list(model.state_dict())
    audio = (np.random.default_rng(0).standard_normal((2, 30000)) * 0.1).astype(np.float32)
    kwargs = {"device": "cpu", "segment": 0.5, "progress": False}
    eager = Separator(model, **kwargs).separate(audio, 44100)
    compiled = Separator(model, **kwargs)
    compile_blocks(compiled.model, compiled.device, backend)
    assert all(m._compiled_call_impl is not None for m in compiled.model.modules()
               if type(m).__name__ == "BidirectionalMamba")
    assert list(compiled.model.state_dict()) == keys
    got = compiled.separate(audio, 44100)
    for stem in eager:
        scale = np.abs(eager[stem]).max()
        assert np.abs(got[stem] - eager[stem]).max() <= 1e-4 * scale, stem


def test_traced_separator_matches_eager():
    """Dynamo and AOT tracing of the ops (what inductor compiles), without the C++ build."""
    separate_compiled("aot_eager")


def test_compiled_modules_in_pieces_trace_one_graph_per_axis(monkeypatch):
    """In pieces (model.bsmamba2.in_pieces: 11 of 62 bands, 9 of 51 frames, the last piece
    filled up with zeros) the compiled modules trace one graph per axis, as on whole inputs,
    and give the eager result."""
    from bsmamba2.model import bsmamba2 as network

    traced = []

    def counting(graph, example_inputs):
        traced.append([tuple(t.shape) for t in example_inputs if isinstance(t, torch.Tensor)])
        return graph.forward

    monkeypatch.setattr(network, "PIECE_TOKENS", 600)
    torch._dynamo.reset()
    separate_compiled(counting)
    assert len(traced) == 2 and (11, 51, 16) in traced[0] and (9, 62, 16) in traced[1]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("BSMAMBA2_TEST_INDUCTOR") != "1",
                    reason="builds C++ for 1-3 minutes on 2 cores; set BSMAMBA2_TEST_INDUCTOR=1")
def test_inductor_separator_matches_eager():
    separate_compiled("inductor")


def test_separator_compile_flag_compiles_the_mamba_modules():
    sep = Separator(BSMamba2(TINY), device="cpu", progress=False, compile=True)
    blocks = [m for m in sep.model.modules() if type(m).__name__ == "BidirectionalMamba"]
    assert blocks and all(m._compiled_call_impl is not None for m in blocks)


@pytest.mark.parametrize("scan", ["torch", "c"])
def test_mamba1_modules_stay_eager(monkeypatch, scan):
    """With the PyTorch scan, traced, its tile loop would unroll; with the C scan compiling
    measured no faster than eager (compiling.traces_well)."""
    monkeypatch.setenv("BSMAMBA2_CPU_SCAN", scan)
    model = BSMamba2(TINY.replace(mixer="mamba"))
    compile_blocks(model, torch.device("cpu"), "aot_eager")
    blocks = [m for m in model.modules() if type(m).__name__ == "BidirectionalMamba"]
    assert blocks and all(m._compiled_call_impl is None for m in blocks)


def test_compile_needs_a_cpp_compiler(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-bsmamba2")
    with pytest.raises(BSMamba2Error, match="C\\+\\+ compiler"):
        compile_blocks(BSMamba2(TINY), torch.device("cpu"))


def test_compile_is_for_the_cpu_path():
    with pytest.raises(BSMamba2Error, match="only for the CPU"):
        compile_blocks(BSMamba2(TINY), torch.device("cuda"))


def test_cli_compile_flag_reaches_the_separator(tmp_path, monkeypatch, capsys):
    """`bsmamba2 separate --compile` compiles the loaded model's blocks on the CPU and says so
    (the compile itself is replaced by a recorder here: the tests above cover it)."""
    calls = []
    monkeypatch.setattr(engine_module, "compile_blocks", lambda model, device: calls.append(device))
    ckpt = tmp_path / "tiny.safetensors"
    save_model(BSMamba2(TINY), ckpt)
    audio = (np.random.default_rng(1).standard_normal((6000, 2)) * 0.1).astype(np.float32)
    sf.write(tmp_path / "song.wav", audio, 44100, subtype="FLOAT")
    args = ["separate", str(tmp_path / "song.wav"), "-o", str(tmp_path / "out"), "--checkpoint", str(ckpt)]
    assert main([*args, "--segment", "0.5", "--device", "cpu", "--compile"]) == 0
    assert calls == [torch.device("cpu")]
    assert "compiling the model on the first segment:" in capsys.readouterr().out
    assert (tmp_path / "out" / "song" / "vocals.wav").is_file()


def test_a_failing_compile_falls_back_to_eager(monkeypatch):
    """A compiler that fails on this machine (at the first call, as inductor's C++ build would)
    costs a warning, not the run: the separation goes on eagerly with the same result."""
    def broken(graph, example_inputs):
        raise RuntimeError("C++ compile error\ncc1plus: fatal error: Python.h: No such file or directory")

    torch.manual_seed(0)
    model = BSMamba2(TINY)
    audio = (np.random.default_rng(2).standard_normal((2, 30000)) * 0.1).astype(np.float32)
    kwargs = {"device": "cpu", "segment": 0.5, "progress": False}
    eager = Separator(model, **kwargs).separate(audio, 44100)
    monkeypatch.setattr(engine_module, "compile_blocks",
                        lambda model, device: compile_blocks(model, device, backend=broken))
    sep = Separator(model, compile=True, **kwargs)
    with pytest.warns(UserWarning, match="torch.compile failed .*Python.h: No such file or directory"):
        got = sep.separate(audio, 44100)
    assert not sep.compiled
    assert all(m._compiled_call_impl is None for m in sep.model.modules())
    np.testing.assert_array_equal(got["vocals"], eager["vocals"])


def test_compile_pays_only_for_long_eager_work(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(compiling.shutil, "which", lambda name: f"/usr/bin/{name}")
    saved_per_second = 1 - 1 / compiling.COMPILED_SPEEDUP
    assert compile_pays(1.01 * compiling.COMPILE_SECONDS / saved_per_second)
    assert not compile_pays(0.99 * compiling.COMPILE_SECONDS / saved_per_second)
    assert compiling.WARM_COMPILE_SECONDS < compiling.COMPILE_SECONDS
    assert compile_pays(1.01 * compiling.WARM_COMPILE_SECONDS / saved_per_second, warm=True)
    assert not compile_pays(0.99 * compiling.WARM_COMPILE_SECONDS / saved_per_second, warm=True)
    monkeypatch.setattr(compiling.shutil, "which", lambda name: None)
    assert not compile_pays(1e9)  # no C++ compiler: eager, no error


@pytest.mark.parametrize(("cost", "compiled"), [(0.0, True), (1e9, False)])
def test_auto_compile_decides_after_the_first_batch(monkeypatch, capsys, cost, compiled):
    """compile="auto" times the first batch eagerly and compiles for the rest only when the
    eager time it would save exceeds the compile's cost; the result does not change."""
    calls = []
    monkeypatch.setattr(engine_module, "compile_blocks", lambda model, device: calls.append(device))
    monkeypatch.setattr(compiling, "COMPILE_SECONDS", cost)
    monkeypatch.setattr(compiling, "WARM_COMPILE_SECONDS", cost)  # warm or not (tests above compiled)
    monkeypatch.setattr(compiling.shutil, "which", lambda name: f"/usr/bin/{name}")
    audio = (np.random.default_rng(3).standard_normal((2, 30000)) * 0.1).astype(np.float32)
    model = BSMamba2(TINY)
    want = Separator(model, device="cpu", segment=0.5, progress=False).separate(audio, 44100)
    sep = Separator(model, device="cpu", segment=0.5, progress=True, compile="auto")
    got = sep.separate(audio, 44100)
    assert calls == ([torch.device("cpu")] * compiled) and sep.compiled == compiled
    assert ("compiling the Mamba-2 modules for the rest" in capsys.readouterr().out) == compiled
    np.testing.assert_array_equal(got["vocals"], want["vocals"])  # the recorder compiles nothing
    sep.separate(audio, 44100)
    assert len(calls) == compiled  # decided once: a compiled model stays compiled


def test_compile_cache_lives_in_the_bsmamba2_cache(tmp_path, monkeypatch):
    """Inductor's cache goes under $BSMAMBA2_CACHE (kept across reboots, unlike its default
    under /tmp) unless TORCHINDUCTOR_CACHE_DIR names one; compiling sets it for inductor."""
    monkeypatch.setenv("BSMAMBA2_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")  # restored after the test
    assert compiling.compile_cache_dir() == tmp_path / "cache" / "inductor"
    compile_blocks(BSMamba2(TINY), torch.device("cpu"), backend="aot_eager")
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compiling.compile_cache_dir() == tmp_path / "mine"


def test_a_compile_that_ran_makes_auto_weigh_the_warm_cost(tmp_path, monkeypatch):
    """After a compiled run of a model, input shape and precision, compile="auto" for the same
    expects the cached compile's cost; another shape, precision or architecture does not."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    calls = []
    monkeypatch.setattr(engine_module, "compile_blocks", lambda model, device: calls.append(device))
    monkeypatch.setattr(compiling, "COMPILE_SECONDS", 1e9)
    monkeypatch.setattr(compiling, "WARM_COMPILE_SECONDS", 0.0)
    monkeypatch.setattr(compiling.shutil, "which", lambda name: f"/usr/bin/{name}")
    audio = (np.random.default_rng(4).standard_normal((2, 30000)) * 0.1).astype(np.float32)
    model = BSMamba2(TINY)
    kwargs = {"device": "cpu", "segment": 0.5, "progress": False}

    def auto_compiles(**more) -> bool:
        sep = Separator(model, compile="auto", **{**kwargs, **more})
        sep.separate(audio, 44100)
        return sep.compiled

    assert not auto_compiles()  # cold: the compile would cost more than it saves
    compiled = Separator(model, compile=True, **kwargs)
    compiled.separate(audio, 44100)  # a compiled run marks its shape
    assert len(list((tmp_path / "inductor" / "bsmamba2-compiled").iterdir())) == 1
    assert auto_compiles()
    assert not auto_compiles(precision="bf16")
    assert not auto_compiles(segment=0.6)
    (shape,) = compiled.runner.shapes
    assert compiling.is_warm(model, shape, "fp32")
    assert not compiling.is_warm(BSMamba2(TINY.replace(dim=24)), shape, "fp32")


def test_auto_compile_stays_eager_for_an_unknown_length(monkeypatch):
    monkeypatch.setattr(engine_module, "compile_blocks", lambda model, device: pytest.fail("compiled"))
    monkeypatch.setattr(compiling, "COMPILE_SECONDS", 0.0)
    sep = Separator(BSMamba2(TINY), device="cpu", progress=False, compile="auto")
    assert sep._auto_compile(SimpleNamespace(total=None, desc="stream"), None).total_segments is None
    assert not AutoCompile(None, lambda eager: pytest.fail("compiled")).decide(1e6, 1)
    assert not sep.compiled
    with pytest.raises(BSMamba2Error, match="compile must be True, False or 'auto'"):
        Separator(BSMamba2(TINY), device="cpu", compile="sometimes")


@pytest.mark.parametrize(("flag", "compiled"), [([], True), (["--compile", "no"], False), (["--compile"], True)])
def test_cli_compile_auto_yes_no(tmp_path, monkeypatch, capsys, flag, compiled):
    """The default (auto) compiles when it pays (here: always, the cost set to zero); no never."""
    calls = []
    monkeypatch.setattr(engine_module, "compile_blocks", lambda model, device: calls.append(device))
    monkeypatch.setattr(compiling, "COMPILE_SECONDS", 0.0)
    monkeypatch.setattr(compiling, "WARM_COMPILE_SECONDS", 0.0)
    monkeypatch.setattr(compiling.shutil, "which", lambda name: f"/usr/bin/{name}")
    ckpt = tmp_path / "tiny.safetensors"
    save_model(BSMamba2(TINY), ckpt)
    sf.write(tmp_path / "song.wav", np.full((30000, 2), 0.1, np.float32), 44100, subtype="FLOAT")
    args = ["separate", str(tmp_path / "song.wav"), "-o", str(tmp_path / "out"), "--checkpoint", str(ckpt)]
    assert main([*args, "--segment", "0.5", "--device", "cpu", *flag]) == 0
    assert calls == ([torch.device("cpu")] if compiled else [])
