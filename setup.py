"""Build shg_fast: the Python package (its Triton kernels in shg_fast.kernels) and the
torch extension shg_fast._C (C++ CPU kernels always; CUDA kernels when a CUDA toolkit and a
CUDA build of torch are present).

Supported: Python >= 3.10, torch >= 2.11, Triton >= 3.6 (tested with torch 2.11.0+cu130 /
Triton 3.6.0 / Python 3.12 and torch 2.13 CPU / Triton 3.9 / Python 3.11).

Knobs (environment): FORCE_CUDA=1 builds the CUDA sources even when detection says no (and
fails loudly if it cannot); SHG_FAST_SKIP_CUDA_BUILD=1 never builds them;
TORCH_CUDA_ARCH_LIST picks the GPU targets (default: the visible GPUs', else "8.0;9.0a");
CUDA_HOME names the toolkit (default: found from the nvcc on the PATH, wrapper scripts
included); MAX_JOBS caps parallel jobs.
Install with `pip install -e . --no-build-isolation` so the installed torch is used.
"""

import glob
import importlib.util
import os
import sys

from setuptools import find_packages, setup

import torch

DEFAULT_ARCH_LIST = "8.0;9.0a"


def load_cuda_toolkit_module():
    """scripts/cuda_toolkit.py (finding and checking the toolkit), loaded by path: not installed."""
    spec = importlib.util.spec_from_file_location("shg_fast_cuda_toolkit", os.path.join("scripts", "cuda_toolkit.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


cuda_toolkit = load_cuda_toolkit_module()


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def default_arch_list() -> str:
    """The visible GPUs' architectures (9.0 as 9.0a, the full Hopper instruction set), else the default."""
    if not torch.cuda.is_available():
        return DEFAULT_ARCH_LIST
    caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
    return ";".join(f"{major}.{minor}" + ("a" if (major, minor) == (9, 0) else "") for major, minor in caps)


FORCE_CUDA = env_flag("FORCE_CUDA")
SKIP_CUDA = env_flag("SHG_FAST_SKIP_CUDA_BUILD")
TORCH_HAS_CUDA = torch.version.cuda is not None
CUDA_HOME, CUDA_HOME_SOURCE = cuda_toolkit.find_cuda_home() if TORCH_HAS_CUDA and not SKIP_CUDA else (None, "not looked for")
CUDA_PROBLEMS = cuda_toolkit.problems(CUDA_HOME) if CUDA_HOME else []
CUDA_OK = TORCH_HAS_CUDA and CUDA_HOME is not None and not CUDA_PROBLEMS
BUILD_CUDA = not SKIP_CUDA and (FORCE_CUDA or CUDA_OK)
if TORCH_HAS_CUDA and not SKIP_CUDA and not CUDA_OK:
    why = (f"torch {torch.__version__} is a CUDA {torch.version.cuda} build, but the CUDA toolkit "
           + (f"at {CUDA_HOME} (from {CUDA_HOME_SOURCE}) is incomplete: {'; '.join(CUDA_PROBLEMS)}"
              if CUDA_HOME else f"was not found ({CUDA_HOME_SOURCE})")
           + ". Set CUDA_HOME to a toolkit root holding bin/nvcc, include/cuda_runtime_api.h and "
             "lib64/libcudart.so (CUDA_INC_PATH may add a folder of headers)")
    if FORCE_CUDA:
        raise RuntimeError(f"FORCE_CUDA=1 but the CUDA sources cannot be built: {why}")
    print(f"shg_fast build: WARNING: building without CUDA kernels: {why}", file=sys.stderr)
if FORCE_CUDA and not SKIP_CUDA and not TORCH_HAS_CUDA:
    raise RuntimeError(f"FORCE_CUDA=1 but torch {torch.__version__} is not a CUDA build (torch.version.cuda is None)")
if BUILD_CUDA:
    os.environ["CUDA_HOME"] = CUDA_HOME
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", default_arch_list())

import torch.utils.cpp_extension as cpp_extension  # noqa: E402  (after CUDA_HOME is settled)
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

if BUILD_CUDA:
    cpp_extension.CUDA_HOME = CUDA_HOME  # the module guessed at import; the build must use this one

cpp_sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
if not BUILD_CUDA:
    cpp_sources = [s for s in cpp_sources if not s.endswith("_cuda.cpp")]

print(f"shg_fast build: {torch.__version__ = }, {torch.version.cuda = }, {CUDA_HOME = } (from {CUDA_HOME_SOURCE})")
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
    classifiers=[
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Operating System :: POSIX :: Linux",
    ],
    packages=find_packages(include=["shg_fast", "shg_fast.*"]),
    package_data={"shg_fast": ["assets/*"]},
    ext_modules=[extension],
    cmdclass={"build_ext": BuildExtension},
    install_requires=[
        "torch>=2.11",
        "numpy",
        "opencv-python-headless",
        "h5py",
        "tqdm",
        "triton>=3.6; platform_system == 'Linux'",
    ],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "hypothesis", "matplotlib"],
        "gpu": ["nvidia-ml-py"],
        # shg-fast export --onnx, and the ONNX Runtime / OpenVINO peers of shg-fast bench and benchmarks/
        "peers": ["onnx", "onnxscript", "onnxruntime", "openvino"],
    },
    entry_points={"console_scripts": ["shg-fast = shg_fast.cli:main"]},
)
