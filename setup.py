"""Build of the C++ XNOR-popcount kernels (seg_service.kernels._core).

One source set; each ISA path is compiled with function-level target attributes and chosen at run
time, so one binary runs on any x86-64 CPU (and the scalar path on any other CPU). Never add
-march=native here: the wheel must run on CPUs other than the build machine's. Threads come from
a small std::thread pool (seg_service/kernels/threadpool.cpp), so no OpenMP flag is needed.
"""

from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup

KERNEL_DIR = Path("seg_service/kernels")
sources = sorted(str(p) for p in KERNEL_DIR.glob("*.cpp"))

ext_modules = (
    [
        Pybind11Extension(
            "seg_service.kernels._core",
            sources,
            depends=sorted(str(p) for p in KERNEL_DIR.glob("*.h")),
            cxx_std=17,
            extra_compile_args=["-O3", "-fno-math-errno", "-pthread"],
            extra_link_args=["-pthread"],
        )
    ]
    if sources
    else []
)

setup(ext_modules=ext_modules)
