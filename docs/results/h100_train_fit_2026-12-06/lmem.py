"""Device memory outside PyTorch's allocator (CUDA context, modules, local memory) after one
Mamba-2 training step (5 x 8 s) of the benchmark's paper model, in MB. Run from the repository
root: ``python lmem.py LABEL``."""

import argparse
import importlib.util
import os
import sys

import torch


def load_benchmark():
    path = os.path.join(os.getcwd(), "benchmark_mamba_ssm.py")
    spec = importlib.util.spec_from_file_location("benchmark_mamba_ssm", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def outside_allocator() -> float:
    free, total = torch.cuda.mem_get_info()
    return (total - free - torch.cuda.memory_reserved()) / 2**20


def main() -> None:
    b = load_benchmark()
    dev = torch.device("cuda")
    options = argparse.Namespace(mixers=["mamba2"], mamba3_chunk=None)
    (_, cfg), = b.mixer_configs(options, b.SHAPES["paper"]["cfg"])
    model = b.BSMamba2(cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    mix = torch.randn(5, 2, int(8 * cfg.sample_rate), device=dev)
    sm, st = b.stft(mix, cfg), b.stft(torch.randn_like(mix), cfg)
    before = outside_allocator()
    with b.ops.use_backend("triton"):
        with b.autocast(dev, torch.bfloat16):
            out = model(sm)[:, 0]
        (torch.view_as_real(out) - torch.view_as_real(st)).abs().mean().backward()
        opt.step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 1e9
    print(sys.argv[1], f"outside the allocator: before {before:.0f} MB, after one training step "
          f"{outside_allocator():.0f} MB; peak allocated {peak:.1f} GB", flush=True)


if __name__ == "__main__":
    main()
