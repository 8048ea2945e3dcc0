"""The Python side of the C++ Fashion-MNIST recipe: the same CNN as model.h, made
quantization-aware by ``qat.prepare`` with plan.yaml, so the checkpoint main.cpp writes loads
into it as it is; then ``qat.convert`` gives the deployable model.

    python recipes/fashion_mnist_cpp/model.py OUT_DIR [--data-dir DIR]

loads OUT_DIR/checkpoint.pt, reports the QAT and converted models' test accuracy, checks both
against the C++ program's own logits (OUT_DIR/eval.pt), and saves the converted state dict as
OUT_DIR/converted.pt.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import qat

HERE = Path(__file__).resolve().parent
PLAN = HERE / "plan.yaml"
DATA_DIR = Path("/usr/share/datasets/fashion-mnist")


class FashionCNN(nn.Module):
    """[N, 1, 28, 28] -> conv 3x3 (16) -> relu -> pool 2 -> conv 3x3 (32) -> relu -> pool 2 ->
    linear (10 logits): model.h's FashionCnn, in float."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def build_qat_model(plan_path: Path = PLAN) -> nn.Module:
    """FashionCNN prepared with plan.yaml: the module layout and state-dict keys of main.cpp's
    model."""
    return qat.prepare(FashionCNN(), qat.Plan.load(plan_path))


def load_checkpoint(path: Path, plan_path: Path = PLAN) -> nn.Module:
    """The QAT model with main.cpp's checkpoint loaded (strictly), in eval mode."""
    model = build_qat_model(plan_path)
    model.load_state_dict(torch.load(path, weights_only=True), strict=True)
    return model.eval()


def read_idx(path: Path) -> np.ndarray:
    """An idx file of unsigned bytes (gzip-compressed or plain) as a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\0\0" or data[2] != 0x08:
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims}, payload has {body.size} bytes")
    return body.reshape(dims)


def load_split(data_dir: Path, name: str) -> Tuple[Tensor, Tensor]:
    """(images float32 [N, 1, 28, 28] = pixel / 255, labels int64 [N]) of "train" or "t10k",
    normalized as main.cpp normalizes them."""
    def find(stem: str) -> Path:
        for p in (data_dir / f"{stem}.gz", data_dir / stem):
            if p.exists():
                return p
        raise FileNotFoundError(f"{data_dir / stem}[.gz] (Debian package dataset-fashion-mnist)")

    images = torch.from_numpy(read_idx(find(f"{name}-images-idx3-ubyte")).copy())
    labels = torch.from_numpy(read_idx(find(f"{name}-labels-idx1-ubyte")).copy())
    return images.unsqueeze(1).to(torch.float32).div(255), labels.to(torch.int64)


@torch.no_grad()
def count_correct(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1000) -> int:
    """Correct predictions, evaluated in batches of batch_size as main.cpp does."""
    correct = 0
    for i in range(0, images.shape[0], batch_size):
        logits = model(images[i:i + batch_size])
        correct += int((logits.argmax(1) == labels[i:i + batch_size]).sum())
    return correct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="the --out directory of fashion_mnist_qat")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    args = parser.parse_args()

    model = load_checkpoint(args.out_dir / "checkpoint.pt")
    converted = qat.convert(model)
    saved = torch.load(args.out_dir / "eval.pt", weights_only=True)
    with torch.no_grad():
        same_qat = torch.equal(model(saved["images"]), saved["logits"])
        same_converted = torch.equal(converted(saved["images"]), saved["logits"])
    images, labels = load_split(args.data_dir, "t10k")
    batch = int(saved["eval_batch_size"])
    for name, m in (("QAT", model), ("converted", converted)):
        correct = count_correct(m, images, labels, batch)
        print(f"{name:9s} test accuracy {correct / len(labels):.4f} ({correct}/{len(labels)})")
    print(f"C++ logits reproduced exactly: QAT {same_qat}, converted {same_converted}")
    torch.save(converted.state_dict(), args.out_dir / "converted.pt")
    print(f"wrote {args.out_dir / 'converted.pt'}")


if __name__ == "__main__":
    main()
