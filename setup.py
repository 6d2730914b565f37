"""Build shg_fast: the Python package, the Triton kernels (as shg_fast.kernels) and the
torch extension shg_fast._C (C++ CPU kernels always; CUDA kernels when a CUDA toolkit and a
CUDA build of torch are present).

Knobs (environment): FORCE_CUDA=1 builds the CUDA sources even when detection says no (and
fails loudly if it cannot); SHG_FAST_SKIP_CUDA_BUILD=1 never builds them;
TORCH_CUDA_ARCH_LIST (default "8.0;9.0") picks the GPU targets; MAX_JOBS caps parallel jobs.
Install with `pip install -e . --no-build-isolation` so the installed torch is used.
"""

import glob
import os
import sys

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

DEFAULT_ARCH_LIST = "8.0;9.0"


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


FORCE_CUDA = env_flag("FORCE_CUDA")
SKIP_CUDA = env_flag("SHG_FAST_SKIP_CUDA_BUILD")
TORCH_HAS_CUDA = torch.version.cuda is not None
BUILD_CUDA = not SKIP_CUDA and (FORCE_CUDA or (TORCH_HAS_CUDA and CUDA_HOME is not None))
if BUILD_CUDA and not (TORCH_HAS_CUDA and CUDA_HOME is not None):
    raise RuntimeError(
        f"FORCE_CUDA=1 but cannot build CUDA sources: torch CUDA version {torch.version.cuda}, "
        f"CUDA_HOME {CUDA_HOME}"
    )
if BUILD_CUDA:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)

cpp_sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
if not BUILD_CUDA:
    cpp_sources = [s for s in cpp_sources if not s.endswith("_cuda.cpp")]

print(f"shg_fast build: {torch.__version__ = }, {torch.version.cuda = }, {CUDA_HOME = }")
print(f"shg_fast build: {FORCE_CUDA = }, {SKIP_CUDA = }, {BUILD_CUDA = }")
print(f"shg_fast build: TORCH_CUDA_ARCH_LIST = {os.environ.get('TORCH_CUDA_ARCH_LIST')!r}, "
      f"MAX_JOBS = {os.environ.get('MAX_JOBS')!r}")
print(f"shg_fast build: C++ sources {cpp_sources}")
print(f"shg_fast build: CUDA sources {cuda_sources if BUILD_CUDA else '(not built)'}")

extra_compile_args = {"cxx": ["-O3", "-std=c++17"]}
extra_link_args = []
# at::parallel_for is a header template: without -fopenmp it runs every loop on one thread. The
# extension then links libgomp.so.1, the OpenMP runtime torch already loaded, so there is one pool.
if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
    extra_compile_args["cxx"].append("-fopenmp")
    extra_link_args.append("-fopenmp")
print(f"shg_fast build: C++ flags {extra_compile_args['cxx']}, link flags {extra_link_args}")
if BUILD_CUDA:
    extra_compile_args["nvcc"] = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]
    extension = CUDAExtension(
        "shg_fast._C", cpp_sources + cuda_sources, include_dirs=["csrc"],
        extra_compile_args=extra_compile_args, extra_link_args=extra_link_args,
        define_macros=[("SHG_FAST_WITH_CUDA", "1")],
    )
else:
    extension = CppExtension(
        "shg_fast._C", cpp_sources, include_dirs=["csrc"], extra_compile_args=extra_compile_args,
        extra_link_args=extra_link_args,
    )

setup(
    name="shg_fast",
    version="0.1.0",
    description="Stacked Hourglass pose network with fused Triton and CUDA kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.10",
    packages=find_packages(include=["shg_fast", "shg_fast.*"]) + ["shg_fast.kernels"],
    package_dir={"shg_fast.kernels": "kernels"},
    package_data={"shg_fast": ["assets/*"]},
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension},
    install_requires=[
        "torch>=2.4",
        "numpy",
        "opencv-python-headless",
        "h5py",
        "tqdm",
        "triton>=3.0; platform_system == 'Linux'",
    ],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "hypothesis", "matplotlib"],
        "gpu": ["nvidia-ml-py"],
    },
    entry_points={"console_scripts": ["shg-fast = shg_fast.cli:main"]},
)
