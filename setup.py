"""Build of the C++ XNOR-popcount kernels (seg_service.kernels._core).

One translation unit set; each ISA path is compiled with function-level target attributes and chosen
at run time, so one binary runs on any x86-64 CPU (and the scalar path on any other CPU).
"""

from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup

KERNEL_DIR = Path("seg_service/kernels")
sources = sorted(str(p) for p in KERNEL_DIR.glob("*.cpp"))

ext_modules = [
    Pybind11Extension(
        "seg_service.kernels._core",
        sources,
        cxx_std=17,
        extra_compile_args=["-O3", "-fno-math-errno", "-fopenmp"],
        extra_link_args=["-fopenmp"],
    )
] if sources else []

setup(ext_modules=ext_modules)
