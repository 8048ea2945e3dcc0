"""The pure C++ QAT example (recipes/fashion_mnist_cpp) against the Python API: a short C++
training run's checkpoint loads strictly into the model qat.prepare builds from plan.yaml; that
model reproduces the C++ program's eval logits bit for bit, qat.convert's model reproduces them
too, and the test accuracy (recomputed here on all 10k test images) is far above chance."""

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import qat

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "fashion_mnist_cpp"
DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
STEPS = 300  # about 20 s here; test accuracy about 0.80


def _load_recipe_model():
    spec = importlib.util.spec_from_file_location("fashion_mnist_cpp_model", RECIPE / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


recipe = _load_recipe_model()


def example_binary() -> Path:
    build = Path(os.environ.get("QAT_CPP_BUILD_DIR", REPO / "build" / "cpp"))
    binary = build / "fashion_mnist_qat"
    if not binary.exists():
        pytest.skip(f"{binary} is not built (configure with -DQAT_BUILD_TESTS=ON, which builds the "
                    f"C++ examples; it also needs zlib); set QAT_CPP_BUILD_DIR for another build dir")
    return binary


def require_data() -> None:
    if not (DATA_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST is not in {DATA_DIR} (Debian package dataset-fashion-mnist)")


@pytest.fixture(scope="module")
def cpp_run(tmp_path_factory):
    """One short C++ training run: (output dir, its stdout)."""
    binary = example_binary()
    require_data()
    out = tmp_path_factory.mktemp("fashion_mnist_cpp")
    seed = int(os.environ.get("QAT_TEST_SEED", time.time_ns() % (2**31)))
    # The same thread count as this process, so the C++ and Python convolutions split their
    # work the same way.
    cmd = [str(binary), "--out", str(out), "--data-dir", str(DATA_DIR), "--epochs", "1",
           "--max-steps", str(STEPS), "--threads", str(torch.get_num_threads()), "--seed", str(seed),
           "--log-every", "100"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    print(f"QAT_TEST_SEED={seed}; {' '.join(cmd)} ({elapsed:.1f} s)\n{proc.stdout}")
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    return out, proc.stdout


@pytest.fixture(scope="module")
def qat_model(cpp_run):
    out, _ = cpp_run
    return recipe.load_checkpoint(out / "checkpoint.pt")


@pytest.fixture(scope="module")
def saved_eval(cpp_run):
    out, _ = cpp_run
    return torch.load(out / "eval.pt", weights_only=True)


@pytest.fixture(scope="module")
def test_split():
    require_data()
    return recipe.load_split(DATA_DIR, "t10k")


def test_checkpoint_has_the_python_models_state(cpp_run):
    out, _ = cpp_run
    state = torch.load(out / "checkpoint.pt", weights_only=True)  # a plain dict of tensors
    model = recipe.build_qat_model()
    expected = model.state_dict()
    assert list(state) and set(state) == set(expected)
    for name, tensor in state.items():
        assert tensor.dtype == expected[name].dtype, name
        assert tensor.shape == expected[name].shape, name
    assert state["conv1.weight_quantizer.scale"].shape == (16,)
    assert state["fc.input_quantizer.min_val"].shape == (1,)
    assert bool(state["conv2.weight_quantizer.initialized"])
    assert (state["conv1.weight_quantizer.scale"] > 0).all()
    model.load_state_dict(state, strict=True)
    assert model.conv1.weight_quantizer._initialized
    assert isinstance(model.fc, qat.nn.QuantLinear)


def test_cpp_reads_the_same_images(saved_eval, test_split):
    images, labels = test_split
    k = saved_eval["images"].shape[0]
    assert torch.equal(saved_eval["images"], images[:k])
    assert torch.equal(saved_eval["labels"], labels[:k])


def test_python_reproduces_cpp_logits_exactly(qat_model, saved_eval):
    with torch.no_grad():
        logits = qat_model(saved_eval["images"])
    torch.testing.assert_close(logits, saved_eval["logits"], rtol=0, atol=0)


def test_converted_model_equals_qat_model(qat_model, saved_eval, test_split):
    converted = qat.convert(qat_model)
    weight = converted.conv1.quantized_weight
    assert isinstance(weight, qat.QuantizedWeight) and weight.codes.dtype == torch.int8
    assert not hasattr(converted.conv1, "weight") or converted.conv1.weight is None
    images, _ = test_split
    with torch.no_grad():
        for batch in (saved_eval["images"], images[:1000]):
            torch.testing.assert_close(converted(batch), qat_model(batch), rtol=0, atol=0)
        torch.testing.assert_close(converted(saved_eval["images"]), saved_eval["logits"], rtol=0, atol=0)


def test_test_accuracy_far_above_chance(cpp_run, qat_model, saved_eval, test_split):
    images, labels = test_split
    correct = recipe.count_correct(qat_model, images, labels, int(saved_eval["eval_batch_size"]))
    # Every prediction on the 10k test images agrees with the C++ program's.
    assert correct == int(saved_eval["test_correct"])
    accuracy = correct / labels.numel()
    print(f"test accuracy after {int(saved_eval['steps'])} C++ QAT steps: {accuracy:.4f}")
    assert int(saved_eval["steps"]) == STEPS
    assert accuracy > 0.7, cpp_run[1]


def test_python_recipe_script(cpp_run):
    out, _ = cpp_run
    proc = subprocess.run([sys.executable, str(RECIPE / "model.py"), str(out), "--data-dir", str(DATA_DIR)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "C++ logits reproduced exactly: QAT True, converted True" in proc.stdout
    assert (out / "converted.pt").exists()


def test_cpp_loads_a_python_state_dict(cpp_run, tmp_path):
    # The other direction: Python changes the model and torch.saves its state_dict; the C++
    # program starts from it (--init, no training) and computes Python's logits exactly.
    out, _ = cpp_run
    model = recipe.load_checkpoint(out / "checkpoint.pt")
    with torch.no_grad():
        model.fc.weight.mul_(0.5)
        model.conv1.weight_quantizer.scale.mul_(1.25)
        model.conv2.input_quantizer.scale.mul_(0.75)
    # A plain dict: LibTorch's unpickler cannot rebuild state_dict()'s OrderedDict.
    torch.save(dict(model.state_dict()), tmp_path / "python.pt")
    cpp_out = tmp_path / "out"
    proc = subprocess.run([str(example_binary()), "--out", str(cpp_out), "--data-dir", str(DATA_DIR),
                           "--init", str(tmp_path / "python.pt"), "--max-steps", "0", "--sample", "64",
                           "--threads", str(torch.get_num_threads())],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    saved = torch.load(cpp_out / "eval.pt", weights_only=True)
    assert int(saved["steps"]) == 0
    with torch.no_grad():
        torch.testing.assert_close(model(saved["images"]), saved["logits"], rtol=0, atol=0)
    written = torch.load(cpp_out / "checkpoint.pt", weights_only=True)
    expected = model.state_dict()
    assert set(written) == set(expected)
    for name, tensor in written.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)


def test_cpp_explains_an_ordered_dict(tmp_path):
    torch.save(recipe.build_qat_model().state_dict(), tmp_path / "ordered.pt")
    proc = subprocess.run([str(example_binary()), "--out", str(tmp_path), "--data-dir", str(DATA_DIR),
                           "--init", str(tmp_path / "ordered.pt"), "--max-steps", "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "torch.save(dict(model.state_dict()), path)" in proc.stderr, proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs must be an integer >= 1"),
    (["--lr", "fast"], "--lr must be a positive number"),
    (["--optimizer", "lamb"], "--optimizer must be adam or sgd"),
    (["--fake-quant", "2"], "--fake-quant must be 0 or 1"),
    (["--max-steps", "0", "--init", "/nonexistent.pt"], "cannot open '/nonexistent.pt'"),
    (["--bogus", "1"], "unknown option --bogus"),
    (["--data-dir", "/nonexistent"], "nor /nonexistent/train-images-idx3-ubyte"),
])
def test_bad_arguments_fail_clearly(tmp_path, args, message):
    proc = subprocess.run([str(example_binary()), "--out", str(tmp_path), *args], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr, proc.stderr


def test_missing_out_fails_clearly():
    proc = subprocess.run([str(example_binary())], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--out DIR is required" in proc.stderr, proc.stderr
