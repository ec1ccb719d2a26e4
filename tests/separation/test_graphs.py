"""CUDA graphs of the model's forward (separation/graphs.py): on CUDA the same bits as eager,
the first batch of a shape eager, the second recorded, the later ones replayed, one graph at
most (other shapes eager); a recording that fails turns them off (eager, a warning); on the
CPU nothing of it runs."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from bsmamba2 import BSMamba2, Separator
from bsmamba2.separation import graphs as graphs_module
from bsmamba2.separation.engine import SegmentModel
from bsmamba2.separation.graphs import CudaGraphs
from tests.helpers.configs import MICRO
from tests.helpers.models import MaskModel

CPU = torch.device("cpu")


def test_on_the_cpu_there_is_no_graph_and_the_same_output():
    x = np.random.default_rng(1).standard_normal((2, 30000)).astype(np.float32) * 0.1
    outs = []
    for graphs in (True, False):
        sep = Separator(MaskModel(gain=0.5), device="cpu", segment=0.25, batch_size=2, progress=False,
                        cuda_graphs=graphs)
        assert sep.runner.graphs is None
        outs.append(sep.separate(x, 44100))
    for stem in outs[0]:
        np.testing.assert_array_equal(outs[0][stem], outs[1][stem])


def test_a_recording_that_fails_turns_the_graphs_off_with_a_warning(monkeypatch):
    """The first call of a shape is eager, the second tries to record: here the recording
    fails (as an op that synchronises would), so it and every later call run eagerly."""
    calls = []

    def forward(x):
        calls.append(x.clone())
        return x * 2

    @contextlib.contextmanager
    def failing(graph, capture_error_mode):
        assert capture_error_mode == "thread_local"
        yield
        raise RuntimeError("operation not permitted when stream is capturing\nmore")

    monkeypatch.setattr(graphs_module.torch.cuda, "CUDAGraph", object)
    monkeypatch.setattr(graphs_module.torch.cuda, "graph", failing)
    run = CudaGraphs(forward)
    xs = [torch.randn(3, 5) for _ in range(3)]
    assert torch.equal(run(xs[0]), xs[0] * 2)
    with pytest.warns(UserWarning, match=r"^CUDA graph recording failed \(operation not permitted when "
                      r"stream is capturing\): continuing without$"):
        assert torch.equal(run(xs[1]), xs[1] * 2)
    assert torch.equal(run(xs[2]), xs[2] * 2)
    assert not run.enabled and run.shapes == []
    assert len(calls) == 4  # eager, the recording attempt, eager again, eager


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("tta", [False, True])
def test_cuda_graph_replays_give_the_eager_bits(tta):
    """Batches of 3 (recorded at the second, replayed after, each on new audio) and odd
    batches of 2 (eager: one graph at most): every result equals the eager model's on the
    same batch, bit for bit."""
    torch.manual_seed(0)
    model = BSMamba2(MICRO).cuda().eval()
    cuda = torch.device("cuda")
    graphed = SegmentModel(model, cuda, "bf16", tta=tta)
    eager = SegmentModel(model, cuda, "bf16", tta=tta, cuda_graphs=False)
    assert eager.graphs is None and graphed.graphs is not None
    rng = np.random.default_rng(4)
    sizes = [3, 3, 3, 2, 3, 2, 2]
    for size in sizes:
        segments = [rng.standard_normal((2, 22050)).astype(np.float32) * 0.3 for _ in range(size)]
        got = graphed.submit(segments)
        want = eager(segments)
        np.testing.assert_array_equal(got.result(), want)
    assert [shape[0] for shape in graphed.graphs.shapes] == [3]  # recorded at its second batch, alone
