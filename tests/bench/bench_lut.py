"""Palettization ops: k-means initialization time and nearest-centroid fake quantization speed.

    python tests/bench/bench_lut.py [--device cpu|cuda] [--threads T] [--reps R] [--write]

1. qat.ops.kmeans_1d of a 4096x4096 fp32 weight, 16 centroids (4 bits) and 256 (8 bits), one
   LUT per tensor and one per group of 16 rows (the one-time initialization; on CUDA it runs
   on the host, copies included).
2. qat.ops.lut_fake_quantize forward and forward+backward (LUT gradient included) on the same
   weight, against x.clone() in the same run. Bytes moved: forward reads x and writes y;
   backward reads x and grad and writes grad_x (the straight-through gradient is grad itself,
   so autograd passes it on without a copy: counted as the forward's 2 tensors plus 2).
--write replaces this machine's section in docs/benchmarks.md.
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import write_section  # noqa: E402
from bench_fake_quant import machine, timer  # noqa: E402

import qat  # noqa: E402,F401
from qat import ops  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dev = args.device
    torch.manual_seed(0)
    w = torch.randn(4096, 4096, device=dev)
    copy_s = timer(dev, lambda: w.clone(), args.reps)
    copy_gbs = 2 * w.numel() * 4 / copy_s / 1e9

    rows = []
    for k in (16, 256):
        for groups, label in ((1, "per tensor"), (256, "per 16 rows")):
            km = timer(dev, lambda: ops.kmeans_1d(w, k, groups), max(1, args.reps // 2))
            lut = ops.kmeans_1d(w, k, groups)
            fwd = timer(dev, lambda: ops.lut_fake_quantize(w, lut), args.reps)
            wg, lg = w.clone().requires_grad_(), lut.clone().requires_grad_()
            g = torch.randn_like(w)

            def step():
                wg.grad = lg.grad = None
                ops.lut_fake_quantize(wg, lg).backward(g)

            both = timer(dev, step, args.reps)
            nbytes = w.numel() * 4
            row = (k, label, km * 1e3, fwd * 1e3, 2 * nbytes / fwd / 1e9, both * 1e3, 4 * nbytes / both / 1e9,
                   2 * nbytes / fwd / 1e9 / copy_gbs)
            rows.append(row)
            print(f"k={k:3} {label:12} kmeans {row[2]:8.1f} ms  fwd {row[3]:7.2f} ms ({row[4]:5.2f} GB/s)  "
                  f"fwd+bwd {row[5]:7.2f} ms ({row[6]:5.2f} GB/s)  copy {copy_gbs:5.2f} GB/s", flush=True)

    head = ("| centroids | LUT | kmeans_1d ms | fwd ms | fwd GB/s | fwd+bwd ms | fwd+bwd GB/s | fwd / copy |\n"
            "|---:|---|---:|---:|---:|---:|---:|---:|\n")
    body = "".join(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.2f} | {r[7]:.0%} |\n"
                   for r in rows)
    cmd = f"python tests/bench/bench_lut.py --device {dev} --threads {args.threads} --reps {args.reps}"
    text = (f"## Palettization, {dev}: {machine(dev)}\n\n"
            f"torch {torch.__version__}, 4096x4096 float32 weight, median of {args.reps} "
            f"(k-means: of {max(1, args.reps // 2)}); copy (`x.clone()`) {copy_gbs:.1f} GB/s.\n"
            f"Command: `{cmd}`\n\n" + head + body + "\n")
    if args.write:
        write_section(f"palettization-{dev}", text)
    print(text)


if __name__ == "__main__":
    main()
