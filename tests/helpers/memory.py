"""Live tensor memory of a piece of code on any device, the CPU included (where torch keeps no
allocator statistics): every tensor an op returns is counted by its storage until that storage
is freed."""

from __future__ import annotations

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensors(TorchDispatchMode):
    """Inside ``with LiveTensors() as live:``, ``live.peak`` is the most bytes that tensors made
    there held at once, ``live.largest`` the largest single storage, ``live.shapes`` the shape
    of each new storage's first tensor (tensors made before the block, such as weights and
    inputs, are not counted)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0
        self.largest = 0
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                known = self.live.get(storage.data_ptr())
                if known is None or known[0].expired():
                    self.live[storage.data_ptr()] = (StorageWeakRef(storage), storage.nbytes())
                    self.largest = max(self.largest, storage.nbytes())
                    self.shapes.append(tuple(t.shape))
        self.live = {ptr: entry for ptr, entry in self.live.items() if not entry[0].expired()}
        self.peak = max(self.peak, sum(size for _, size in self.live.values()))
        return out
