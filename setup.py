"""Builds qat's native code by driving CMake (CMakeLists.txt is the one build description).

Install with `pip install --no-build-isolation -e .` after `pip install torch==2.13.0`:
an isolated build environment would download a CUDA build of torch.
"""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        import torch.utils

        # One CMake build makes every extension; they are laid out under the qat package dir.
        out_dir = Path(self.get_ext_fullpath("qat._C")).resolve().parent
        build_dir = Path(os.environ.get("QAT_CMAKE_BUILD_DIR", ROOT / "build" / "python"))
        build_dir.mkdir(parents=True, exist_ok=True)
        config = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            "-DCMAKE_BUILD_TYPE=Release",
            "-DQAT_BUILD_PYTHON=ON",
            f"-DQAT_PYTHON_OUTPUT_DIR={out_dir}",
            f"-DQAT_PYTHON_EXT_SUFFIX={sysconfig.get_config_var('EXT_SUFFIX')}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        ]
        if "QAT_USE_CUDA" in os.environ:
            config.append(f"-DQAT_USE_CUDA={os.environ['QAT_USE_CUDA']}")
        subprocess.check_call(config)
        subprocess.check_call(["cmake", "--build", str(build_dir), "--target", "qat_C", "--target", "qat_export_python"])


setup(
    name="qat",
    version="0.1.0",
    description="Quantization-aware training ops, APIs and exporters for PyTorch / LibTorch",
    packages=find_packages(include=["qat", "qat.*"]),
    # Listed so that setuptools installs (and editable installs copy) each module CMake built.
    ext_modules=[CMakeExtension("qat._C"), CMakeExtension("qat.export._core")],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.10",
    install_requires=["torch>=2.11"],
)
