"""Interleaved A/B of the reference ssd_scan (time-axis piece of the paper model, bf16 autocast,
inference mode): base tree vs this tree, CPU time, 1 thread unless told."""
import importlib.util, sys, time, resource, torch
threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
torch.set_num_threads(threads)
def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    m = importlib.util.module_from_spec(spec); sys.modules[name] = m; spec.loader.exec_module(m); return m
import bsmamba2.ops.reference.ssd as new
base = load("base_ssd", "/tmp/base/bsmamba2/ops/reference/ssd.py")
torch.manual_seed(0)
b, L, h, p, n = 16, 801, 16, 64, 128
x = torch.randn(b, L, h, p).bfloat16(); dt = (torch.randn(b, L, h) - 1).bfloat16()
A = -torch.exp(torch.rand(h) * 2.5); B = torch.randn(b, L, 1, n).bfloat16(); C = torch.randn(b, L, 1, n).bfloat16()
D = torch.randn(h); bias = torch.randn(h) * 0.5
def cpu(): r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime
res = {"base": [], "new": []}
with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
    outs = {}
    for rnd in range(int(sys.argv[2]) if len(sys.argv) > 2 else 6):
        for name, mod in (("base", base), ("new", new)):
            t0, c0 = time.perf_counter(), cpu()
            outs[name] = mod.ssd_scan(x, dt, A, B, C, D, dt_bias=bias, dt_softplus=True)
            res[name].append((time.perf_counter() - t0, cpu() - c0))
print("max abs diff", (outs["base"].float() - outs["new"].float()).abs().max().item(), "scale", outs["base"].float().abs().max().item())
for k, v in res.items():
    print(k, "wall min %.3f  cpu min %.3f" % (min(w for w, _ in v[1:]), min(c for _, c in v[1:])), [round(c, 3) for _, c in v])
