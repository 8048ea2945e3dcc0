"""GGUF lattice fake quantization (qat.ops.gguf_fake_quantize) vs per-group affine fake
quantization (qat.ops.fake_quantize, group 32) vs copy bandwidth, side by side in one run.

    python tests/bench/bench_gguf_lattice.py [--device cpu|cuda] [--rows R] [--cols C] [--threads T] [--write]

A weight of [rows, cols] float32. Bandwidth counts the minimal bytes of the weight-sized tensors:
forward reads w and writes y (2); forward+backward with learnable block parameters also reads w
and dy and writes dw (5). The per-group baseline is LSQ-learnable too. --write replaces this
machine's section in docs/benchmarks.md.
"""

import argparse
import subprocess

import torch

import qat
from bench_common import write_section
from bench_fake_quant import machine, timer
from qat.export import gguf as G

TYPES = ("Q8_0", "Q4_0", "Q4_1", "IQ4_NL", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


def gguf_case(t, w):
    p = G.unpack_params(G.quantize(w, t), t, w.shape)
    params = [None if a is None else a.float().to(w.device).requires_grad_() for a in (p.d, p.dmin, p.scales, p.mins)]
    return lambda x: qat.ops.gguf_fake_quantize(x, *params, t)


def group_case(w):
    s = (w.detach().reshape(w.shape[0], -1, 32).abs().amax(-1) / 7).clamp_min(1e-6).requires_grad_()
    z = torch.zeros_like(s).requires_grad_()
    return lambda x: qat.ops.fake_quantize(x, s, z, -8, 7, group_size=32)


def run(device, rows, cols, reps):
    w = torch.randn(rows, cols, device=device)
    dy = torch.randn_like(w)
    nbytes = w.numel() * w.element_size()
    copy_bw = 2 * nbytes / timer(device, lambda: w.clone(), reps) / 1e9
    cases = [("affine per-group 32 (LSQ)", group_case(w))] + [(t, gguf_case(t, w.cpu()) if device == "cpu" else gguf_case(t, w)) for t in TYPES]
    out = []
    for name, fn in cases:
        with torch.no_grad():
            t_fwd = timer(device, lambda: fn(w), reps)
        x = w.detach().requires_grad_()
        t_bwd = timer(device, lambda: (fn(x).backward(dy), setattr(x, "grad", None)), reps)
        row = (name, t_fwd * 1e3, 2 * nbytes / t_fwd / 1e9, t_bwd * 1e3, 5 * nbytes / t_bwd / 1e9, copy_bw)
        out.append(row)
        print(f"{name:26} fwd {row[1]:8.2f} ms {row[2]:6.1f} GB/s   fwd+bwd {row[3]:8.2f} ms {row[4]:6.1f} GB/s   "
              f"copy {copy_bw:6.1f} GB/s", flush=True)
    return out


def table(rows):
    head = ("| lattice | fwd ms | fwd GB/s | fwd / copy | fwd+bwd ms | fwd+bwd GB/s | fwd+bwd / copy |\n"
            "|---|---:|---:|---:|---:|---:|---:|\n")
    return head + "".join(
        f"| {r[0]} | {r[1]:.2f} | {r[2]:.1f} | {r[2] / r[5]:.0%} | {r[3]:.2f} | {r[4]:.1f} | {r[4] / r[5]:.0%} |\n"
        for r in rows)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--cols", type=int, default=4096)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(args.device, args.rows, args.cols, args.reps)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cmd = (f"python tests/bench/bench_gguf_lattice.py --device {args.device} --rows {args.rows} --cols {args.cols} "
           f"--threads {args.threads}")
    text = (f"## GGUF lattice fake quantization, {args.device}: {machine(args.device)}\n\n"
            f"torch {torch.__version__}, qat commit {commit}, float32 [{args.rows}, {args.cols}] weight, learnable "
            f"block parameters, median of {args.reps}. Copy: `w.clone()` in the same run.\n"
            f"Command: `{cmd}`\n\n{table(rows)}\n")
    print("\n" + text)
    if args.write:
        write_section(f"gguf-lattice-{args.device}", text)


if __name__ == "__main__":
    main()
