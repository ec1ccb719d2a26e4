#!/usr/bin/env python
"""The separator's model call alone (STFT, model, iSTFT) on batches of 8 s segments: GPU time
per segment against the batch size (warm, synchronised, median of ``--repeat``), and how far
each batch size's results are from the same segments run one at a time (max |difference|
relative to the largest sample): what ``--batch-size`` trades; each size eager and replayed
as a CUDA graph (separation/graphs.py), and how far the replay is from eager (0: the same bits).

Example: ``python tools/bench_segments.py --config configs/bsmamba2.yaml --sizes 1 2 4 8 16
--json segments.json`` (CUDA, bf16). Random weights and audio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bsmamba2.model import BSMamba2, BSMamba2Config
from bsmamba2.separation.engine import SegmentModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/bsmamba2.yaml")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--segment", type=float, default=8.0)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    cfg = BSMamba2Config.from_yaml(args.config)
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = BSMamba2(cfg).to(device).eval()
    runs = {"eager": SegmentModel(model, device, args.precision, cuda_graphs=False),
            "graphs": SegmentModel(model, device, args.precision)}
    rng = np.random.default_rng(0)
    samples = round(args.segment * cfg.sample_rate)
    segments = [rng.standard_normal((2, samples)).astype(np.float32) * 0.1 for _ in range(max(args.sizes))]
    alone = [runs["eager"]([s])[0] for s in segments]
    scale = max(float(np.abs(a).max()) for a in alone)
    rows = []
    print(f"{'batch':>5}  {'ms/segment':>10}  {'ms/batch':>9}  {'graphs ms/seg':>13}  "
          f"{'max diff (rel.)':>15}  {'graphs vs eager':>15}")
    for size in args.sizes:
        batch = segments[:size]
        row = {"batch": size}
        for name, run in runs.items():
            out = [run(batch), run(batch)][0]  # with graphs: the first eager, the second recorded
            walls = []
            for _ in range(args.repeat):
                torch.cuda.synchronize()
                start = time.perf_counter()
                got = run(batch)  # returns the results on the host: synchronised
                walls.append(time.perf_counter() - start)
            wall = statistics.median(walls)
            key = "" if name == "eager" else "graphs_"
            row |= {f"{key}ms_per_segment": 1e3 * wall / size, f"{key}ms_per_batch": 1e3 * wall}
            if name == "eager":
                row["max_rel_diff_vs_alone"] = max(
                    float(np.abs(o - a).max()) for o, a in zip(out, alone, strict=False)) / scale
                eager_out = out
            else:
                row["graphs_max_abs_diff_vs_eager"] = float(np.abs(got - eager_out).max())
        rows.append(row)
        print(f"{size:5d}  {row['ms_per_segment']:10.2f}  {row['ms_per_batch']:9.1f}  "
              f"{row['graphs_ms_per_segment']:13.2f}  {row['max_rel_diff_vs_alone']:15.2e}  "
              f"{row['graphs_max_abs_diff_vs_eager']:15.2e}", flush=True)
    if args.json:
        meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "torch": torch.__version__,
                "device": torch.cuda.get_device_name(), "settings": vars(args) | {"json": str(args.json)}}
        args.json.write_text(json.dumps({**meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
