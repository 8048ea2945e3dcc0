import os
import time

import pytest
import torch

import qat  # noqa: F401  (registers torch.ops.qat)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    # Fresh random inputs on every run; a failing test's captured output shows the seed
    # (QAT_TEST_SEED=... reproduces it).
    seed = int(os.environ.get("QAT_TEST_SEED", time.time_ns() % (2**31)))
    print(f"QAT_TEST_SEED={seed}")
    torch.manual_seed(seed)
    yield seed
