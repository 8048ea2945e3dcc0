"""The ops under torch.compile(fullgraph=True) training and torch.export."""

import torch

import qat


class QuantLinear(torch.nn.Module):
    """A linear layer with an LSQ-learned per-channel int4 weight and an fp8 activation cast."""

    def __init__(self, d_in, d_out):
        super().__init__()
        self.linear = torch.nn.Linear(d_in, d_out)
        w = self.linear.weight.detach()
        self.scale = torch.nn.Parameter(w.abs().amax(1) / 7)
        self.register_buffer("zero_point", torch.zeros(d_out))

    def forward(self, x):
        w = qat.ops.fake_quantize(self.linear.weight, self.scale, self.zero_point, -8, 7, axis=0, grad_factor=0.1)
        return torch.nn.functional.linear(qat.ops.fake_cast(x, "fp8_e4m3"), w, self.linear.bias)


def train(model, step_fn, steps=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    torch.manual_seed(0)
    for _ in range(steps):
        x, target = torch.randn(16, 32), torch.randn(16, 8)
        loss = step_fn(model, x, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses)


def test_compile_fullgraph_training_matches_eager():
    torch.manual_seed(1)
    eager = QuantLinear(32, 8)
    compiled = QuantLinear(32, 8)
    compiled.load_state_dict(eager.state_dict())

    def step(model, x, target):
        return torch.nn.functional.mse_loss(model(x), target)

    eager_losses = train(eager, step)
    compiled_losses = train(compiled, torch.compile(step, fullgraph=True, backend="aot_eager"))
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled.scale, eager.scale, rtol=1e-5, atol=1e-7)


def test_compile_inductor_forward():
    model = QuantLinear(32, 8).eval()
    x = torch.randn(4, 32)
    torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x))


def test_export_round_trip(tmp_path):
    model = QuantLinear(32, 8).eval()
    x = torch.randn(5, 32)
    batch = torch.export.Dim("batch")
    exported = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    ops = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert "qat.fake_quantize.default" in ops and "qat.fake_cast.default" in ops
    path = tmp_path / "model.pt2"
    torch.export.save(exported, path)
    loaded = torch.export.load(path)
    x2 = torch.randn(9, 32)
    torch.testing.assert_close(loaded.module()(x2), model(x2), rtol=0, atol=0)
