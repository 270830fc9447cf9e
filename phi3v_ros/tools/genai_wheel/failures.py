"""
Known failures of the onnxruntime-genai build on Jetson: how each shows in a log, and the fix.

The runner matches a failed step's log against these patterns and prints the fix; docs/jetson.md
has the same table for people reading it before they start.
"""
from __future__ import annotations

from dataclasses import dataclass
import re
from typing import List


@dataclass(frozen=True)
class KnownFailure:
    key: str
    pattern: str        # regular expression searched in the log
    symptom: str
    fix: str


KNOWN_FAILURES = (
    KnownFailure('oom', r"Killed signal terminated program|cicc' died due to signal 9|"
                 r'c\+\+: fatal error: Killed|signal 9 \(Kill signal\)|out of memory',
                 'the compiler is killed (signal 9) half-way through the build',
                 'the build ran out of memory: rerun with fewer jobs (--jobs 1 or 2) and/or add '
                 'swap (sudo fallocate -l 8G /swapfile && sudo chmod 600 /swapfile && sudo mkswap '
                 '/swapfile && sudo swapon /swapfile); the build resumes where it stopped'),
    KnownFailure('cmake-old', r'CMake (\d+\.\d+) or higher is required',
                 'CMake 3.28 or higher is required. You are running version 3.22.1',
                 'install a newer CMake for your user: '
                 "python3 -m pip install --user 'cmake>=3.28,<4' "
                 '(or rerun the builder with --install-cmake)'),
    KnownFailure('python-h', r'Python\.h: No such file|Could NOT find Python.*Development',
                 'fatal error: Python.h: No such file or directory',
                 'install the Python headers of the ROS interpreter: '
                 'sudo apt install python3-dev'),
    KnownFailure('no-nvcc',
                 r'No CMAKE_CUDA_COMPILER could be found|USE_CUDA is ON but no cuda compiler|'
                 r'cuda_home paths must be specified',
                 'CMake finds no CUDA compiler',
                 'install the CUDA toolkit (sudo apt install nvidia-jetpack, or '
                 'cuda-toolkit-12-6) and pass --cuda-home /usr/local/cuda-12.6 if several '
                 'are installed'),
    KnownFailure('gcc-old', r'unsupported GNU version|GCC version must be greater|'
                 r"unrecognized command.line option '-std=c\+\+20'|std=c\+\+2a",
                 'the compiler is too old (C++20 / CUDA host compiler errors)',
                 'use GCC 9 or newer for releases up to 0.11 (their CUDA build is C++17), GCC 10 '
                 'or newer from 0.12 (C++20); JetPack 6 has GCC 11 (on Ubuntu 20.04: sudo apt '
                 'install gcc-11 g++-11 and export CC=gcc-11 CXX=g++-11)'),
    KnownFailure('no-cuda-provider', r'Expected the ONNX Runtime providers cuda library',
                 'Expected the ONNX Runtime providers cuda library to be found at '
                 '.../libonnxruntime_providers_cuda.so',
                 'the ONNX Runtime given is CPU-only: use an onnxruntime-gpu build for Jetson '
                 '(--ort-source)'),
    KnownFailure('no-ort-lib', r'cannot find -lonnxruntime|libonnxruntime\.so.*No such file',
                 'ld: cannot find -lonnxruntime',
                 'the unversioned libonnxruntime.so link is missing in ort/lib: rerun the builder '
                 '(its ORT step creates it)'),
    # Only errors about ONNX Runtime's own API: "has no member named" alone is any C++ error.
    KnownFailure('api-too-old', r"'(?:const )?(?:struct )?(?:Ort\w*|Ort::\w+)' has no member "
                 r"named|'Ort\w+' was not declared in this scope|ORT API Version|"
                 r'Failed to load onnxruntime',
                 'compile errors in onnxruntime_api.h, or "Failed to load onnxruntime" at import',
                 'the ONNX Runtime headers or library are older than this onnxruntime-genai '
                 'needs: see the version table (--list-versions) and match --ort-version'),
    KnownFailure('cudnn', r'libcudnn\.so\.\d+: cannot open shared object file',
                 'libcudnn.so.9: cannot open shared object file',
                 'the onnxruntime-gpu build was made for another cuDNN than JetPack has: install '
                 'the onnxruntime-gpu built for your JetPack '
                 '(JetPack 6.1/6.2 have cuDNN 9; 6.0 has cuDNN 8)'),
    KnownFailure('no-ort-package', r'Could not find the onnxruntime package|'
                 r"No module named 'onnxruntime'",
                 'ImportError: Could not find the onnxruntime package',
                 'onnxruntime-genai loads ONNX Runtime from the onnxruntime-gpu Python package: '
                 'install it into the ROS Python (see docs/jetson.md, step 2)'),
    KnownFailure('pip-dep', r'No matching distribution found for onnxruntime-gpu',
                 'pip: No matching distribution found for onnxruntime-gpu',
                 'PyPI has no aarch64 onnxruntime-gpu: install the wheel with --no-deps (the '
                 'builder does) after installing onnxruntime-gpu from a Jetson index'),
    KnownFailure('externally-managed', r'externally-managed-environment',
                 'error: externally-managed-environment (Ubuntu 24.04)',
                 'install into a virtual environment made with --system-site-packages, or pass '
                 '--pip-args=--break-system-packages if you accept that'),
    KnownFailure('no-kernel-image', r'no kernel image is available for execution on the device',
                 'CUDA error: no kernel image is available for execution on the device',
                 'the wheel was built for another GPU: '
                 'rebuild with the right --cuda-arch (87 Orin, 72 Xavier)'),
    KnownFailure('cuda-unavailable', r'Cuda interface not available|is_cuda_available: False',
                 'is_cuda_available() is False / "Cuda interface not available"',
                 'a CPU onnxruntime-genai wheel is installed over the CUDA one (pip install '
                 'onnxruntime-genai pulls the CPU build): pip uninstall onnxruntime-genai, then '
                 'reinstall the built wheel'),
    KnownFailure('git-network',
                 r'Could not resolve host|Failed to connect to github.com|unable to access',
                 'git clone / FetchContent cannot reach github.com',
                 'the build downloads its sources and dependencies: connect the Jetson to the '
                 'internet (or set https_proxy) and rerun; it resumes'),
)


def match_failures(log_text: str) -> List[KnownFailure]:
    """Known failures whose pattern occurs in the log (last 200 kB), most specific first."""
    tail = (log_text or '')[-200_000:]
    return [f for f in KNOWN_FAILURES if re.search(f.pattern, tail, re.IGNORECASE)]
