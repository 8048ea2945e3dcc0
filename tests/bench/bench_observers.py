"""qat observers vs PyTorch's, side by side in one run.

    python tests/bench/bench_observers.py [--device cpu|cuda] [--numel N] [--threads T] [--write]

1. Fused observe + fake-quantize (qat.ops.observe_fake_quantize) vs
   torch.fused_moving_avg_obs_fake_quant, per tensor and per channel, with x.clone() as the
   copy baseline. "Bytes moved" is what the fused op must move: x read twice (statistics, then
   quantization: the range is only known after a full pass) and y written once.
2. qat.observers.HistogramObserver vs torch.ao.quantization.HistogramObserver on the same batches,
   for several batch sizes.
3. MSE calibration (qat.observers.mse_qparams) of a 4096x4096 weight per channel, 100 candidates.
--write replaces this machine's section in docs/benchmarks.md.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import torch
from torch.ao.quantization import observer as ao

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import write_section  # noqa: E402
from bench_fake_quant import machine, timer  # noqa: E402

import qat  # noqa: E402,F401
import qat.observers as Q  # noqa: E402
from qat import ops  # noqa: E402


def bench_fused(device, numel, reps):
    rows = []
    x = torch.randn(4096, numel // 4096, device=device)
    on = torch.ones(1, dtype=torch.long, device=device)
    copy_s = timer(device, lambda: x.clone(), reps)
    nbytes = 3 * x.numel() * x.element_size()
    for per_channel in (False, True):
        c = 4096 if per_channel else 1
        t_buf = [torch.full((c,), float("inf"), device=device), torch.full((c,), float("-inf"), device=device),
                 torch.ones(c, device=device), torch.zeros(c, dtype=torch.int32, device=device)]
        q_buf = [torch.full((c,), float("inf"), device=device), torch.full((c,), float("-inf"), device=device),
                 torch.ones(c, device=device), torch.zeros(c, device=device)]
        theirs = timer(device, lambda: torch.fused_moving_avg_obs_fake_quant(
            x, on, on, *t_buf, 0.01, 0, 255, 0, per_channel, False), reps)
        ours = timer(device, lambda: ops.observe_fake_quantize(
            x, on, on, *q_buf, 0.01, 0, 255, 0, per_channel, False), reps)
        row = ("per channel" if per_channel else "per tensor", ours * 1e3, theirs * 1e3,
               nbytes / ours / 1e9, 2 * x.numel() * 4 / copy_s / 1e9, theirs / ours)
        rows.append(row)
        print(f"fused {row[0]:12} qat {row[1]:8.2f} ms  built-in {row[2]:8.2f} ms  qat {row[3]:6.1f} GB/s  "
              f"copy {row[4]:6.1f} GB/s  speedup {row[5]:5.2f}x", flush=True)
    return rows


def bench_histogram(device, reps):
    """8 batches per size whose range grows for 4 steps, then repeats (re-binning, then steady)."""
    rows = []
    for numel in (16384, 262144, 1048576, 4194304):
        batches = [torch.randn(numel, device=device) * (1 + i % 4) for i in range(8)]

        def run(make):
            def go():
                obs = make()
                for b in batches:
                    obs(b)
                return obs.calculate_qparams()
            return go

        theirs = timer(device, run(lambda: ao.HistogramObserver(bins=2048).to(device)), max(1, reps // 2))
        ours = timer(device, run(lambda: Q.HistogramObserver(0, 255, bins=2048).to(device)), reps)
        rows.append((numel, ours * 1e3, theirs * 1e3, theirs / ours))
        print(f"histogram 8 batches of {numel:8}: qat {ours * 1e3:8.2f} ms  torch.ao {theirs * 1e3:8.2f} ms  "
              f"speedup {theirs / ours:6.1f}x", flush=True)
    return rows


def bench_mse(device, reps):
    w = torch.randn(4096, 4096, device=device)
    seconds = timer(device, lambda: Q.mse_qparams(w, -8, 7, True, axis=0, num_candidates=100), reps)
    print(f"mse 4096x4096 per channel, 100 candidates: {seconds:.3f} s", flush=True)
    return seconds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--numel", type=int, default=16 * 1024 * 1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    fused = bench_fused(args.device, args.numel, args.reps)
    hist = bench_histogram(args.device, args.reps)
    mse = bench_mse(args.device, max(1, args.reps // 2))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cmd = (f"python tests/bench/bench_observers.py --device {args.device} --numel {args.numel} "
           f"--threads {args.threads}")
    text = (f"## Observers, {args.device}: {machine(args.device)}\n\n"
            f"torch {torch.__version__}, qat commit {commit}, median of {args.reps}. Command: `{cmd}`\n\n"
            f"Fused observe + fake-quantize, fp32 [4096, {args.numel // 4096}], quint8 range "
            f"(qat GB/s counts x read twice + y written; copy GB/s is x.clone()):\n\n"
            "| granularity | qat ms | built-in ms | qat GB/s | copy GB/s | qat / built-in |\n"
            "|---|---:|---:|---:|---:|---:|\n"
            + "".join(f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.2f}x |\n" for r in fused)
            + "\nHistogram observer (2048 bins), 8 batches per row whose range grows for 4 steps and then "
            "repeats, then calculate_qparams:\n\n"
            "| elements per batch | qat ms | torch.ao HistogramObserver ms | qat speedup |\n|---:|---:|---:|---:|\n"
            + "".join(f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.1f}x |\n" for r in hist)
            + "\n"
            f"MSE calibration of a 4096x4096 fp32 weight, per channel, 100 clipping candidates: "
            f"**{mse:.3f} s**.\n\n")
    print("\n" + text)
    if args.write:
        write_section(f"observers-{args.device}", text)


if __name__ == "__main__":
    main()
