"""qat fake quantization vs PyTorch's built-ins vs copy bandwidth, side by side in one run.

    python tests/bench/bench_fake_quant.py [--device cpu|cuda] [--numel N] [--threads T] [--write]

Bandwidth counts the minimal bytes: forward reads x and writes y (2 tensors); forward+backward
adds reading x and dy and writing dx (5 tensors in all). Per-group has no built-in; its
built-in column is the per-channel built-in on the [groups, group_size] view, which computes
the same thing. --write replaces this machine's section in docs/benchmarks.md.
"""

import argparse
import statistics
import subprocess
import time

import torch

import qat
from bench_common import cpu_model, write_section


def timer(device, fn, reps):
    fn()
    fn()
    times = []
    for _ in range(reps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cases(numel, dtype, device):
    rows = 4096
    cols = numel // rows
    x = torch.randn(rows, cols, device=device).to(dtype)
    ch_scale = torch.rand(rows, device=device) * 0.05 + 0.01
    gs = 32
    g_scale = torch.rand(rows, cols // gs, device=device) * 0.05 + 0.01
    t_scale = torch.tensor([0.02], device=device)

    def qparams(scale, learn):
        return (scale.clone().requires_grad_(learn), torch.zeros_like(scale).requires_grad_(learn))

    ch_zp_int = torch.zeros(rows, dtype=torch.int32, device=device)
    g_zp_int = torch.zeros(g_scale.numel(), dtype=torch.int32, device=device)
    x_groups = x.reshape(-1, gs)

    def ours(scale, learn, **kw):
        s, z = qparams(scale, learn)
        return lambda xx: qat.ops.fake_quantize(xx, s, z, -128, 127, **kw)

    yield ("per-tensor", ours(t_scale, False),
           lambda xx: torch.fake_quantize_per_tensor_affine(xx, t_scale, torch.zeros(1, dtype=torch.int32, device=device), -128, 127), x)
    yield ("per-channel", ours(ch_scale, False, axis=0),
           lambda xx: torch.fake_quantize_per_channel_affine(xx, ch_scale, ch_zp_int, 0, -128, 127), x)
    yield ("per-group 32", ours(g_scale, False, group_size=gs),
           lambda xx: torch.fake_quantize_per_channel_affine(xx, g_scale.flatten(), g_zp_int, 0, -128, 127), x_groups)
    if dtype == torch.float32:  # the learnable built-ins are float32 only
        ts, tz = qparams(t_scale, True)
        yield ("learnable per-tensor", ours(t_scale, True),
               lambda xx: torch._fake_quantize_learnable_per_tensor_affine(xx, ts, tz, -128, 127, 1.0), x)
        cs, cz = qparams(ch_scale, True)
        yield ("learnable per-channel", ours(ch_scale, True, axis=0),
               lambda xx: torch._fake_quantize_learnable_per_channel_affine(xx, cs, cz, 0, -128, 127, 1.0), x)


def run(device, numel, reps):
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        x0 = torch.randn(numel, device=device).to(dtype)
        nbytes = x0.numel() * x0.element_size()
        copy_t = timer(device, lambda: x0.clone(), reps)
        copy_bw = 2 * nbytes / copy_t / 1e9
        for name, ours, theirs, x_builtin in cases(numel, dtype, device):
            dy = torch.randn_like(x_builtin)
            x_ours = x_builtin.reshape(4096, -1) if name == "per-group 32" else x_builtin
            dy_ours = dy.reshape(x_ours.shape)
            for mode in ("fwd", "fwd+bwd"):
                if mode == "fwd":
                    with torch.no_grad():
                        t_ours = timer(device, lambda: ours(x_ours), reps)
                        t_theirs = timer(device, lambda: theirs(x_builtin), reps)
                    moved = 2 * nbytes
                else:
                    xo = x_ours.detach().requires_grad_()
                    xb = x_builtin.detach().requires_grad_()
                    # Drop .grad each time: accumulating into it would add passes to both sides.
                    t_ours = timer(device, lambda: (ours(xo).backward(dy_ours), setattr(xo, "grad", None)), reps)
                    t_theirs = timer(device, lambda: (theirs(xb).backward(dy), setattr(xb, "grad", None)), reps)
                    moved = 5 * nbytes
                bw_ours, bw_theirs = moved / t_ours / 1e9, moved / t_theirs / 1e9
                rows.append((str(dtype).replace("torch.", ""), name, mode, t_ours * 1e3, t_theirs * 1e3,
                             bw_ours, bw_theirs, copy_bw, t_theirs / t_ours, bw_ours / copy_bw))
                print(f"{rows[-1][0]:9} {name:22} {mode:8} qat {bw_ours:7.1f} GB/s  built-in {bw_theirs:7.1f} GB/s  "
                      f"copy {copy_bw:7.1f} GB/s  speedup {t_theirs / t_ours:5.2f}x  of copy {bw_ours / copy_bw:4.0%}", flush=True)
    return rows


def machine(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{cpu_model()}, {torch.get_num_threads()} threads"


def table(rows):
    head = ("| dtype | granularity | pass | qat ms | built-in ms | qat GB/s | built-in GB/s | copy GB/s | qat / built-in | qat / copy |\n"
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
    return head + "".join(
        f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.1f} | {r[6]:.1f} | {r[7]:.1f} | {r[8]:.2f}x | {r[9]:.0%} |\n"
        for r in rows)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--numel", type=int, default=16 * 1024 * 1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(args.device, args.numel, args.reps)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    cmd = f"python tests/bench/bench_fake_quant.py --device {args.device} --numel {args.numel} --threads {args.threads}"
    text = (f"## Fake quantization, {args.device}: {machine(args.device)}\n\n"
            f"torch {torch.__version__}, qat commit {commit}, {args.numel} elements, median of {args.reps}.\n"
            f"Command: `{cmd}`\n\n{table(rows)}\n")
    print("\n" + text)
    if args.write:
        write_section(f"fake-quant-{args.device}", text)


if __name__ == "__main__":
    main()
