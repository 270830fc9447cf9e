"""
Prepare, on a machine with package-registry access, what the GPU machine (no network) needs.

Downloads the CUDA builds of onnxruntime-genai and onnxruntime for the GPU machine's Python (3.12,
x86_64) and the ROS 2 rclpy + message wheels for it, packs them into one tar and splits that into
parts small enough for one device call each (64 MiB a call, repository included). Everything goes
to bench/gpu/wheels/ (git-ignored). Then run, back to back (the machine stays warm only briefly):

    python bench/gpu/prepare.py      # here: download, pack, split; prints the calls
    # device call k (carry that part):
    python3 bench/gpu/device.py receive bench/gpu/wheels/bundle.part-k
    # last call (see README, "GPU measurements"):
    python3 bench/gpu/device.py install && ...
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile

HERE = os.path.dirname(os.path.abspath(__file__))
WHEELS = os.path.join(HERE, 'wheels')
PART_BYTES = 58 * 1024 * 1024     # leaves room for the repository in a 64 MiB call
PLATFORM = ['--python-version', '3.12', '--implementation', 'cp', '--only-binary=:all:',
            '--no-deps', '--platform', 'manylinux_2_28_x86_64', '--platform',
            'manylinux_2_17_x86_64', '--platform', 'manylinux2014_x86_64', '--platform', 'any']
# onnxruntime-genai-cuda 0.18 needs onnxruntime-gpu >= 1.31 (CUDA 13 builds, as the GPU machine
# has). The model builder (onnxruntime_genai.models.builder) imports onnx_ir, which the GPU machine
# lacks.
GENAI = ['onnxruntime-genai-cuda==0.18.0', 'onnxruntime-gpu>=1.31,<1.33', 'flatbuffers',
         'onnx-ir==1.1.0', 'ml-dtypes',
         # constrained JSON answers are checked with jsonschema (core/answers.py)
         'jsonschema>=4,<5', 'jsonschema-specifications', 'referencing', 'rpds-py', 'attrs']
# rclpy's runtime closure as installed by requirements/ros-pypi.txt (checked in a bare venv:
# message imports need rosidl_parser and rosidl_generator_py too).
ROS = ['ros-rclpy==9.1.2', 'ros-std-msgs', 'ros-sensor-msgs', 'ros-std-srvs',
       'ros-diagnostic-msgs', 'ros-rmw-fastrtps-cpp', 'ros-rmw-fastrtps-shared-cpp',
       'ros-rmw-implementation', 'ros-rmw', 'ros-rmw-dds-common', 'ros-rmw-security-common',
       'ros-fastdds', 'ros-fastcdr', 'ros-foonathan-memory-vendor', 'ros-rcl', 'ros-rcl-action',
       'ros-rcl-interfaces', 'ros-rcl-lifecycle', 'ros-rcl-logging-interface',
       'ros-rcl-logging-spdlog', 'ros-rcl-yaml-param-parser', 'ros-rcpputils', 'ros-rcutils',
       'ros-rpyutils', 'ros-libyaml-vendor', 'ros-spdlog-vendor', 'ros-tracetools',
       'ros-ament-index-python', 'ros-ament-index-cpp', 'ros-builtin-interfaces',
       'ros-action-msgs', 'ros-geometry-msgs', 'ros-lifecycle-msgs', 'ros-rosgraph-msgs',
       'ros-service-msgs', 'ros-type-description-interfaces', 'ros-unique-identifier-msgs',
       'ros-rosidl-core-runtime', 'ros-rosidl-default-runtime', 'ros-rosidl-dynamic-typesupport',
       'ros-rosidl-dynamic-typesupport-fastrtps', 'ros-rosidl-runtime-c', 'ros-rosidl-runtime-cpp',
       'ros-rosidl-typesupport-c', 'ros-rosidl-typesupport-cpp',
       'ros-rosidl-typesupport-fastrtps-c', 'ros-rosidl-typesupport-fastrtps-cpp',
       'ros-rosidl-typesupport-interface', 'ros-rosidl-typesupport-introspection-c',
       'ros-rosidl-typesupport-introspection-cpp', 'ros-wheels-bootstrapper', 'ros-rosidl-parser',
       'ros-rosidl-generator-py', 'lark', 'typing-extensions', 'pyyaml', 'psutil']


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--skip-download', action='store_true')
    args = parser.parse_args(argv)
    download = os.path.join(WHEELS, 'download')
    os.makedirs(download, exist_ok=True)
    if not args.skip_download:
        subprocess.run([sys.executable, '-m', 'pip', 'download', '-q', *PLATFORM, '-d', download,
                        *GENAI, *ROS], check=True)
    wheels = sorted(name for name in os.listdir(download) if name.endswith('.whl'))
    bundle = os.path.join(WHEELS, 'bundle.tar')
    with tarfile.open(bundle, 'w') as tar:
        for name in wheels:
            tar.add(os.path.join(download, name), arcname=name)
    for old in (name for name in os.listdir(WHEELS) if name.startswith('bundle.part-')):
        os.remove(os.path.join(WHEELS, old))
    parts = []
    with open(bundle, 'rb') as f:
        for index, block in enumerate(iter(lambda: f.read(PART_BYTES), b''), start=1):
            part = os.path.join(WHEELS, f'bundle.part-{index}')
            with open(part, 'wb') as out:
                out.write(block)
            parts.append(os.path.basename(part))
    manifest = {'bundle_sha256': sha256(bundle), 'bundle_bytes': os.path.getsize(bundle),
                'parts': parts, 'wheels': wheels}
    with open(os.path.join(WHEELS, 'manifest.json'), 'w') as f:
        json.dump(manifest, f, indent=2)
    os.remove(bundle)
    print(f'{len(wheels)} wheels, {manifest["bundle_bytes"] / 2**20:.0f} MiB in {len(parts)} '
          f'parts (sha256 {manifest["bundle_sha256"][:16]}...) in {WHEELS}')
    for part in parts:
        print(f'  carry bench/gpu/wheels/{part} bench/gpu/wheels/manifest.json; '
              f'run: python3 bench/gpu/device.py receive bench/gpu/wheels/{part}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
