"""QAT training-step time and peak memory over float's, side by side in one run.

    python tests/bench/bench_qat_overhead.py [--device cpu|cuda] [--threads T] [--steps N] [--write]

1. ResNet-18-style CNN (tests/python/nets.py), INT8 weights per output channel + INT8 activations
   per tensor, Conv+BN folded: float vs qat.prepare vs torch.ao FX QAT (prepare_qat_fx with the
   x86 QAT qconfig: the same INT8 weight / activation scheme, Conv+BN folded too).
2. Transformer block stack (d=1024, pre-norm attention + 4x MLP in plain PyTorch ops), 8da4w:
   int8 dynamic per-token asymmetric activations into every Linear, int4 symmetric group-32
   weights: float vs qat vs the same scheme written in plain PyTorch ops with a straight-through
   round (torchao-style), in fp32 and under bf16 autocast.
A step is forward + backward + SGD step, median of --steps after warm-up. Peak memory is
measured per configuration in a fresh subprocess: torch.cuda.max_memory_allocated on CUDA, the
process's peak RSS over its RSS before the first step on CPU.
--write replaces this machine's section in docs/benchmarks.md.
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "python"))
from bench_common import write_section  # noqa: E402
from bench_fake_quant import machine  # noqa: E402
from nets import ResNet18  # noqa: E402

import qat  # noqa: E402

# Problem sizes: a small CNN and a short stack on 2 CPU threads; the sizes on a GPU.
SIZES = {
    "cpu": dict(cnn_width=16, cnn_batch=32, cnn_hw=32, blocks=2, batch=2, seq=128),
    "cuda": dict(cnn_width=64, cnn_batch=128, cnn_hw=224, blocks=8, batch=8, seq=512),
}


# ---- models -----------------------------------------------------------------------------------

class Block(nn.Module):
    """Pre-norm transformer block in plain PyTorch ops (d=1024, 16 heads, 4x MLP)."""

    def __init__(self, d=1024, heads=16):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


def transformer(blocks):
    return nn.Sequential(*[Block() for _ in range(blocks)])


class RefLinear8da4w(nn.Linear):
    """8da4w in plain PyTorch ops (the anchor): per-token asymmetric int8 activations and
    symmetric int4 group-32 weights, round with a straight-through estimator."""

    @staticmethod
    def _ste_round(t):
        return t + (torch.round(t) - t).detach()

    def forward(self, x):
        lo = x.detach().amin(-1, keepdim=True).clamp(max=0)
        hi = x.detach().amax(-1, keepdim=True).clamp(min=0)
        scale = ((hi - lo) / 255).clamp(min=2.0 ** -23)
        zp = torch.round(-128 - lo / scale)
        xq = (torch.clamp(self._ste_round(x / scale) + zp, -128, 127) - zp) * scale
        w = self.weight.view(self.out_features, -1, 32)
        ws = (w.detach().abs().amax(-1, keepdim=True) / 7).clamp(min=2.0 ** -23)
        wq = (torch.clamp(self._ste_round(w / ws), -8, 7) * ws).view_as(self.weight)
        return F.linear(xq, wq, self.bias)


def to_reference_8da4w(model):
    for m in model.modules():
        for name, child in m.named_children():
            if type(child) is nn.Linear:
                ref = RefLinear8da4w(child.in_features, child.out_features, device=child.weight.device)
                ref.load_state_dict(child.state_dict())
                setattr(m, name, ref)
    return model


CNN_PLAN = qat.Plan([qat.Rule(type=(nn.Conv2d, nn.Linear),
                              weight=qat.QuantSpec(bits=8, granularity="channel"),
                              input=qat.QuantSpec(bits=8, signed=False, symmetric=False))])
PLAN_8DA4W = qat.Plan([qat.Rule(type=nn.Linear,
                                weight=qat.QuantSpec(bits=4, granularity="group", group_size=32),
                                input=qat.QuantSpec(bits=8, symmetric=False, granularity="token", dynamic=True))])


def build(config, device, sizes):
    """(model, input batch, loss function) for one configuration name."""
    torch.manual_seed(0)
    if config.startswith("cnn"):
        model = ResNet18(num_classes=10, width=sizes["cnn_width"]).to(device)
        x = torch.randn(sizes["cnn_batch"], 3, sizes["cnn_hw"], sizes["cnn_hw"], device=device)
        y = torch.randint(0, 10, (sizes["cnn_batch"],), device=device)
        if config == "cnn-qat":
            model = qat.prepare(model, CNN_PLAN)
        elif config == "cnn-torch.ao":
            from torch.ao.quantization import get_default_qat_qconfig_mapping
            from torch.ao.quantization.quantize_fx import prepare_qat_fx
            model = prepare_qat_fx(model.train(), get_default_qat_qconfig_mapping("x86"), (x,))
        return model.train(), x, lambda out: F.cross_entropy(out, y)
    model = transformer(sizes["blocks"]).to(device)
    x = torch.randn(sizes["batch"], sizes["seq"], 1024, device=device)
    if "-qat" in config:
        model = qat.prepare(model, PLAN_8DA4W)
    elif "-ref" in config:
        model = to_reference_8da4w(model)
    return model.train(), x, lambda out: out.float().pow(2).mean()


# ---- measurement --------------------------------------------------------------------------------

def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def step_times(config, device, sizes, steps):
    model, x, loss_fn = build(config, device, sizes)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    autocast = config.endswith("bf16")

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
            loss = loss_fn(model(x))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    for _ in range(3):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024
    return statistics.median(times), peak


def run_child(args, config):
    """One configuration in a fresh process, so peak memory is its own."""
    cmd = [sys.executable, __file__, "--child", config, "--device", args.device, "--threads", str(args.threads),
           "--steps", str(args.steps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(args, group, configs, sizes_text):
    results = {c: run_child(args, c) for c in configs}
    base_t, base_m = results[configs[0]]["time"], results[configs[0]]["peak"]
    lines = [sizes_text, "",
             "| configuration | step (ms) | / float | peak memory (MiB) | / float |",
             "|---|---:|---:|---:|---:|"]
    for c in configs:
        r = results[c]
        lines.append(f"| {c} | {r['time'] * 1e3:.1f} | {r['time'] / base_t:.3f}x | {r['peak'] / 2**20:.0f} | "
                     f"{r['peak'] / max(base_m, 1):.2f}x |")
    text = "\n".join(lines) + "\n"
    print(f"\n{group}\n{text}")
    return text


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--write", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sizes = SIZES[args.device]
    if args.child:
        t, peak = step_times(args.child, args.device, sizes, args.steps)
        print(json.dumps({"time": t, "peak": peak}))
        return

    s = sizes
    cnn = table(args, "CNN", ["cnn-float", "cnn-qat", "cnn-torch.ao"],
                f"ResNet-18 layout, width {s['cnn_width']}, batch {s['cnn_batch']} x 3 x {s['cnn_hw']}^2, "
                "INT8 per-channel weights + INT8 per-tensor activations, Conv+BN folded.")
    stack = (f"{s['blocks']} blocks, d=1024, batch {s['batch']} x {s['seq']} tokens, 8da4w (int8 dynamic "
             "per-token activations, int4 group-32 weights); `ref` is the same scheme in plain PyTorch ops.")
    fp32 = table(args, "Transformer fp32", ["tr-float", "tr-qat", "tr-ref"], stack)
    bf16 = table(args, "Transformer bf16 autocast", ["tr-float-bf16", "tr-qat-bf16", "tr-ref-bf16"],
                 "The same stack under bf16 autocast.")
    if args.write:
        cmd = f"python tests/bench/bench_qat_overhead.py --device {args.device} --threads {args.threads} --write"
        write_section(f"qat-overhead-{args.device}",
                      f"## QAT step overhead, {args.device}: {machine(args.device)}\n\n"
                      f"`{cmd}`, eager mode, median of {args.steps} steps.\n\n### CNN\n\n{cnn}\n"
                      f"### Transformer stack, fp32\n\n{fp32}\n### Transformer stack, bf16 autocast\n\n{bf16}\n")


if __name__ == "__main__":
    main()
