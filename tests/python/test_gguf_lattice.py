"""qat.ops.gguf_fake_quantize / gguf_codes: the exact GGUF lattices.

Every type: forward and codes bitwise against a pure-torch reference (gguf_lattice_reference),
the packed bytes decode (exporter core and gguf-py) to exactly the forward, the untrained forward
against llama.cpp's reference quantizer, gradients against the reference formula, opcheck,
torch.compile, fp16/bf16, non-finite and out-of-range parameters, and argument errors."""

import numpy as np
import pytest
import torch

import qat
from qat.export import gguf as G

import gguf_lattice_reference as ref

TYPES = ref.TYPES
K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.float().view(torch.int32)


def assert_bitwise(a: torch.Tensor, b: torch.Tensor, what=""):
    assert a.shape == b.shape, what
    if not torch.equal(bits(a), bits(b)):
        bad = (bits(a) != bits(b)).nonzero()[:5].tolist()
        raise AssertionError(f"{what}: {int((bits(a) != bits(b)).sum())} differ, e.g. at {bad}: "
                             f"{[a[tuple(i)].item() for i in bad]} vs {[b[tuple(i)].item() for i in bad]}")


def make_weight(t, rows=6, blocks=2, dtype=torch.float32, device="cpu"):
    """Random rows of different magnitudes with the hard cases planted: an all-zero block, a
    constant block, a block with one large outlier, a tiny-magnitude row, negative-only values."""
    block = ref.LATTICES[t].block
    cols = blocks * block
    w = torch.randn(rows, cols) * torch.logspace(-3, 1, rows).unsqueeze(1)
    planted = [
        lambda r: r[:block].zero_(),
        lambda r: r[:block].fill_(0.37),
        lambda r: r.__setitem__(5, 60.0),
        lambda r: r.copy_(r.abs().neg()),
        lambda r: r[block // 2:block].zero_(),  # half a block zero: sub-blocks with a zero scale
        lambda r: r.mul_(1e-6),
    ]
    for row, plant in zip(w, planted):
        plant(row)
    return w.to(device=device, dtype=dtype)


def reference_params(w, t):
    """The parameters llama.cpp's reference quantizer stores for w (float32 tensors)."""
    p = G.unpack_params(G.quantize(w.float().cpu(), t), t, w.shape)
    f = lambda a: None if a is None else a.float().to(w.device)  # noqa: E731
    return f(p.d), f(p.dmin), f(p.scales), f(p.mins)


def perturbed_params(w, t, gen):
    """Trained-looking parameters: scales moved off the reference (not fp16 / integer values),
    some outside the format's range, some blocks with negative or zero scales."""
    d, dmin, sc, mn = reference_params(w, t)
    L = ref.LATTICES[t]

    def noisy(p, rel):
        return p * (1 + rel * torch.randn(p.shape, generator=gen).to(p.device))

    def plant(p, values):
        flat = p.view(-1)
        for i, v in values.items():
            if i < flat.numel():
                flat[i] = v(flat[i]) if callable(v) else v

    d = noisy(d, 0.05)
    plant(d, {1: lambda v: -v, 3: 0.0})  # a negative and a zero block scale
    if dmin is not None:
        dmin = noisy(dmin, 0.05)
    if sc is not None:
        sc = sc + 1.5 * torch.randn(sc.shape, generator=gen).to(sc.device)
        plant(sc, {0: L.scale_hi + 7.3, 2: 0.0, 5: L.scale_lo - 3.0})  # clamped, zero
    if mn is not None:
        mn = mn + 1.5 * torch.randn(mn.shape, generator=gen).to(mn.device)
        plant(mn, {1: -2.0})
    return d, dmin, sc, mn


def op_args(w, params, t):
    return (w, *params, t)


def pack_forward(codes, params, t):
    p = qat.formats.gguf.stored_params(*params, t)
    return G.pack(t, codes, p.d, p.dmin, p.scales, p.mins)


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("which", ["reference", "perturbed"])
def test_forward_and_codes_match_reference(t, which, device):
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    for rows, blocks in ((6, 2), (3, 1), (2, 3)):
        w = make_weight(t, rows, blocks, device=device)
        params = reference_params(w, t) if which == "reference" else perturbed_params(w, t, gen)
        y = qat.ops.gguf_fake_quantize(*op_args(w, params, t))
        codes = qat.ops.gguf_codes(*op_args(w, params, t))
        y_ref, codes_ref = ref.forward(w.cpu(), *[None if p is None else p.cpu() for p in params], t)
        assert_bitwise(y.cpu(), y_ref, f"{t} y")
        assert torch.equal(codes.cpu(), codes_ref), t
        assert codes.dtype == torch.int8 and y.dtype == w.dtype
        assert torch.isfinite(y).all()


@pytest.mark.parametrize("t", TYPES)
def test_packed_bytes_decode_to_forward(t):
    """What QAT trains is what ships: pack(codes, stored params) dequantizes, in the exporter
    core (llama.cpp's dequantize_row_*) and in gguf-py, to exactly the forward's output."""
    gguf_py = pytest.importorskip("gguf")
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    for which in ("reference", "perturbed"):
        w = make_weight(t, 6, 3)
        params = reference_params(w, t) if which == "reference" else perturbed_params(w, t, gen)
        y = qat.ops.gguf_fake_quantize(*op_args(w, params, t))
        data = pack_forward(qat.ops.gguf_codes(*op_args(w, params, t)), params, t)
        assert len(data) == G.quantized_nbytes(w.shape, t)
        assert_bitwise(G.dequantize(data, t, w.shape), y, f"{t} core")
        qtype = getattr(gguf_py.GGMLQuantizationType, t)
        raw = np.frombuffer(data, dtype=np.uint8).reshape(w.shape[0], -1)
        assert_bitwise(torch.from_numpy(gguf_py.quants.dequantize(raw, qtype).copy()), y, f"{t} gguf-py")


@pytest.mark.parametrize("t", TYPES)
def test_untrained_forward_vs_reference_quantizer(t):
    """Initialized from llama.cpp's reference quantizer, the forward equals ggml's dequantization
    of the reference bytes: exactly for the K-quants (their reference computes the final codes
    from the stored fp16 / 6-bit values, as the forward does), and for all but a few codes for
    the 32-element types (their reference rounds with the fp32 scale before it is stored)."""
    w = torch.randn(64, 1024) * torch.rand(64, 1)
    y = qat.ops.gguf_fake_quantize(*op_args(w, reference_params(w, t), t))
    y_ref = G.dequantize(G.quantize(w, t), t, w.shape)
    match = (y == y_ref).float().mean().item()
    if t in K_TYPES:
        assert match == 1.0
    else:
        assert match > 0.98, match
        assert (y - y_ref).abs().max() <= (y_ref.abs().max() / 4)  # a neighbouring code at most


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_weights(t, dtype):
    w = make_weight(t, 4, 2, dtype=dtype)
    params = reference_params(w, t)
    y = qat.ops.gguf_fake_quantize(*op_args(w, params, t))
    y32 = qat.ops.gguf_fake_quantize(*op_args(w.float(), params, t))
    assert y.dtype == dtype
    assert_bitwise(y, y32.to(dtype), t)
    gw = G.dequantize(pack_forward(qat.ops.gguf_codes(*op_args(w, params, t)), params, t), t, w.shape)
    assert_bitwise(gw, y32, t)


@pytest.mark.parametrize("t", TYPES)
def test_gradients_match_reference(t, device):
    gen = torch.Generator().manual_seed(torch.seed() % 2**31)
    for dtype in (torch.float32, torch.bfloat16):
        w = make_weight(t, 5, 2, dtype=dtype, device=device)
        params = perturbed_params(w, t, gen)
        w_ = w.clone().requires_grad_()
        ps = [None if p is None else p.clone().requires_grad_() for p in params]
        y = qat.ops.gguf_fake_quantize(w_, *ps, t)
        g = torch.randn(y.shape, generator=gen).to(device=device, dtype=dtype)
        y.backward(g)
        r = ref.backward(g.cpu(), w.cpu(), *[None if p is None else p.cpu() for p in params], t)
        assert_bitwise(w_.grad.cpu(), r.w, f"{t} dw")
        for name, mine, theirs in zip(("d", "dmin", "sub_scales", "sub_mins"), ps, r[1:]):
            if mine is None:
                assert theirs is None
                continue
            assert_bitwise(mine.grad.cpu(), theirs, f"{t} grad {name}")


@pytest.mark.parametrize("t", ["Q4_0", "Q4_K", "Q6_K"])
def test_gradient_of_zero_scale_points_back(t):
    """A block scale of 0 is the limit of a tiny positive one: it still gets a gradient, and a
    step against it (to the reference scale's magnitude) lowers the loss ||y - w||^2."""
    w = make_weight(t, 3, 1)
    d, dmin, sc, mn = reference_params(w, t)
    size = d[2, 0].abs().item()
    d = d.clone()
    d[2, 0] = 0.0
    d.requires_grad_()

    def loss(d):
        return ((qat.ops.gguf_fake_quantize(w, d, dmin, sc, mn, t) - w) ** 2).sum()

    before = loss(d)
    before.backward()
    assert d.grad[2, 0] != 0
    with torch.no_grad():
        stepped = d.clone()
        stepped[2, 0] = -size * torch.sign(d.grad[2, 0])
        assert loss(stepped) < before


@pytest.mark.parametrize("t", TYPES)
def test_frozen_params_and_backward_op(t):
    """Parameters that do not require grad get none (one pass for w only); the backward op's
    outputs are empty for absent or unrequested parameter gradients."""
    w = make_weight(t, 2, 1).requires_grad_()
    params = reference_params(w.detach(), t)
    y = qat.ops.gguf_fake_quantize(w, *params, t)
    y.sum().backward()
    r = ref.backward(torch.ones_like(w), w.detach(), *params, t)
    assert_bitwise(w.grad, r.w, t)
    out = torch.ops.qat.gguf_fake_quantize_backward(torch.ones_like(w), w.detach(), *params, t, False)
    assert all(o.numel() == 0 for o in out[1:])
    out = torch.ops.qat.gguf_fake_quantize_backward(torch.ones_like(w), w.detach(), *params, t, True)
    for o, p in zip(out[1:], params):
        assert o.shape == (p.shape if p is not None else (0,))


@pytest.mark.parametrize("t", TYPES)
def test_nonfinite_input_and_parameters(t):
    w = make_weight(t, 3, 1)
    w[0, 3] = float("nan")
    w[1, 4] = float("inf")
    w[2, 7] = float("-inf")
    d, dmin, sc, mn = reference_params(torch.nan_to_num(w, nan=0.0, posinf=1.0, neginf=-1.0), t)
    d = d.clone()
    d[1, 0] = float("nan")
    d[2, 0] = 1e30  # clamps to the largest fp16
    y = qat.ops.gguf_fake_quantize(w, d, dmin, sc, mn, t)
    y_ref, c_ref = ref.forward(w, d, dmin, sc, mn, t)
    assert_bitwise(y, y_ref, t)
    assert torch.isnan(y[0, 3]) and torch.isfinite(y[1:]).all()
    assert torch.equal(qat.ops.gguf_codes(w, d, dmin, sc, mn, t), c_ref)
    w_ = w.clone().requires_grad_()
    qat.ops.gguf_fake_quantize(w_, d, dmin, sc, mn, t).sum().backward()
    assert w_.grad[0, 3] == 0 and torch.isfinite(w_.grad).all()


def test_empty_and_multidim():
    for t in ("Q8_0", "Q4_K"):
        B = ref.LATTICES[t].block
        w = torch.empty(0, B)
        params = reference_params(torch.zeros(1, B), t)
        params = [None if p is None else p[:0] for p in params]
        assert qat.ops.gguf_fake_quantize(w, *params, t).shape == (0, B)
        w3 = make_weight(t, 6, 2).reshape(2, 3, 2 * B)
        p3 = reference_params(w3, t)
        y3 = qat.ops.gguf_fake_quantize(w3, *p3, t)
        y2 = qat.ops.gguf_fake_quantize(w3.reshape(6, -1), *[None if p is None else p.reshape(6, *p.shape[2:]) for p in p3], t)
        assert_bitwise(y3.reshape(6, -1), y2, t)


def test_noncontiguous_weight():
    t = "Q4_K"
    w = make_weight(t, 4, 2).t().contiguous().t()  # column-major storage
    params = reference_params(w, t)
    assert_bitwise(qat.ops.gguf_fake_quantize(w, *params, t),
                   qat.ops.gguf_fake_quantize(w.contiguous(), *params, t), t)


# ---- opcheck, compile ------------------------------------------------------------------------

def _samples(t, device):
    gen = torch.Generator().manual_seed(0)
    w = make_weight(t, 3, 1, device=device)
    out = []
    for learn in (False, True):
        params = perturbed_params(w, t, gen)
        params = [None if p is None else p.clone().requires_grad_(learn) for p in params]
        out.append((w.clone().requires_grad_(), *params, t))
    wb = make_weight(t, 2, 1, dtype=torch.bfloat16, device=device)
    out.append((wb, *reference_params(wb, t), t))
    return out


@pytest.mark.parametrize("t", TYPES)
def test_opcheck(t, device):
    for args in _samples(t, device):
        torch.library.opcheck(torch.ops.qat.gguf_fake_quantize.default, args)
        detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(torch.ops.qat.gguf_codes.default, detached)
        for pg in (False, True):
            bargs = (torch.randn_like(detached[0]), *detached, pg)
            torch.library.opcheck(torch.ops.qat.gguf_fake_quantize_backward.default, bargs)


def test_compile_fullgraph():
    t = "Q4_K"
    w = make_weight(t, 4, 2)
    params = [None if p is None else p.clone().requires_grad_() for p in reference_params(w, t)]

    def f(w, d, dmin, sc, mn):
        return (qat.ops.gguf_fake_quantize(w, d, dmin, sc, mn, t) * 2).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    w1 = w.clone().requires_grad_()
    compiled(w1, *params).backward()
    eager_grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    w2 = w.clone().requires_grad_()
    f(w2, *params).backward()
    assert torch.equal(w1.grad, w2.grad)
    for a, p in zip(eager_grads, params):
        assert torch.equal(a, p.grad)


# ---- errors ----------------------------------------------------------------------------------

def test_errors():
    w = torch.randn(4, 256)
    d, dmin, sc, mn = reference_params(w, "Q4_K")
    op = qat.ops.gguf_fake_quantize
    with pytest.raises(RuntimeError, match="unknown GGUF lattice type 'Q4_X'.*Q4_K"):
        op(w, d, dmin, sc, mn, "Q4_X")
    with pytest.raises(RuntimeError, match="blocks of 256 along the last dim of w, which is 128"):
        op(torch.randn(4, 128), d, dmin, sc, mn, "Q4_K")
    with pytest.raises(RuntimeError, match="d must have shape"):
        op(w, d[:, :0], dmin, sc, mn, "Q4_K")
    with pytest.raises(RuntimeError, match="sub_scales must have shape"):
        op(w, d, dmin, sc[..., :4], mn, "Q4_K")
    with pytest.raises(RuntimeError, match="d must be float32"):
        op(w, d.double(), dmin, sc, mn, "Q4_K")
    with pytest.raises(RuntimeError, match="Q4_K needs sub_mins"):
        op(w, d, dmin, sc, None, "Q4_K")
    with pytest.raises(RuntimeError, match="Q6_K has no dmin"):
        op(w, d, dmin, sc.repeat(1, 1, 2), None, "Q6_K")
    with pytest.raises(RuntimeError, match="w must be float32, float16 or bfloat16"):
        op(w.double(), d, dmin, sc, mn, "Q4_K")
    with pytest.raises(RuntimeError, match="at least one dim"):
        op(torch.tensor(1.0), d, dmin, sc, mn, "Q4_K")
    with pytest.raises(RuntimeError, match="grad shape"):
        torch.ops.qat.gguf_fake_quantize_backward(torch.ones(2, 256), w, d, dmin, sc, mn, "Q4_K", True)
    if torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="d is on"):
            op(w.cuda(), d, dmin.cuda(), sc.cuda(), mn.cuda(), "Q4_K")
