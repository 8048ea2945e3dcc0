"""The LibTorch training loop (tests/cpp/test_training_loop.cpp) and the same loop in Python
produce the same losses, gradients and parameters: one autograd implementation, in C++."""

import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

import qat


def cpp_loop_binary():
    build = os.environ.get("QAT_CPP_BUILD_DIR")
    if not build:
        pytest.skip("QAT_CPP_BUILD_DIR is not set (the README's test command sets it)")
    binary = Path(build) / "test_training_loop"
    assert binary.exists(), f"{binary} was not built"
    return binary


def test_cpp_loop_matches_python(tmp_path):
    out = tmp_path / "loop.pt"
    env = dict(os.environ, QAT_CPP_LOOP_OUT=str(out))
    subprocess.run([str(cpp_loop_binary())], check=True, env=env, capture_output=True)
    x, target, weight, scale, zero_point, cpp_losses, cpp_gw, cpp_gs, cpp_w, cpp_s = torch.load(out, weights_only=False)  # written just now by our own binary

    weight = weight.clone().requires_grad_()
    scale = scale.clone().requires_grad_()
    grad_factor = 1.0 / math.sqrt(32 * 7)
    opt = torch.optim.SGD([weight, scale], lr=0.05)
    losses = []
    for step in range(len(cpp_losses)):
        w = qat.ops.fake_quantize(weight, scale, zero_point, -8, 7, 0, None, grad_factor)
        loss = torch.nn.functional.mse_loss(x @ w.t(), target)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            torch.testing.assert_close(weight.grad, cpp_gw, rtol=0, atol=0)
            torch.testing.assert_close(scale.grad, cpp_gs, rtol=0, atol=0)
        opt.step()
        losses.append(loss.detach())
    torch.testing.assert_close(torch.stack(losses), cpp_losses, rtol=0, atol=0)
    torch.testing.assert_close(weight.detach(), cpp_w, rtol=0, atol=0)
    torch.testing.assert_close(scale.detach(), cpp_s, rtol=0, atol=0)
