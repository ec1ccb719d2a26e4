"""Device memory outside PyTorch's allocator (CUDA context, modules, local memory) after one
Mamba-2 training step (5 x 8 s) of the benchmark's model, in MB."""
import argparse, importlib.util, os, sys
import torch
spec = importlib.util.spec_from_file_location("benchmark_mamba_ssm", os.path.join(os.getcwd(), "benchmark_mamba_ssm.py"))
b = importlib.util.module_from_spec(spec); sys.modules[spec.name] = b; spec.loader.exec_module(b)
dev = torch.device("cuda"); shapes = b.SHAPES["paper"]
(_, cfg), = b.mixer_configs(argparse.Namespace(mixers=["mamba2"], mamba3_chunk=None), shapes["cfg"])
model = b.BSMamba2(cfg).to(dev); opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
mix = torch.randn(5, 2, int(8 * cfg.sample_rate), device=dev)
sm, st = b.stft(mix, cfg), b.stft(torch.randn_like(mix), cfg)
def outside():
    free, total = torch.cuda.mem_get_info(); return (total - free - torch.cuda.memory_reserved()) / 2**20
before = outside()
with b.ops.use_backend("triton"):
    with b.autocast(dev, torch.bfloat16):
        out = model(sm)[:, 0]
    (torch.view_as_real(out) - torch.view_as_real(st)).abs().mean().backward(); opt.step()
torch.cuda.synchronize()
print(sys.argv[1], f"outside the allocator: before {before:.0f} MB, after one training step {outside():.0f} MB; peak allocated {torch.cuda.max_memory_allocated()/1e9:.1f} GB", flush=True)
