"""
On the GPU machine: receive the carried parts, then install the CUDA wheels into a private venv.

    python3 bench/gpu/device.py receive bench/gpu/wheels/bundle.part-3
    python3 bench/gpu/device.py install          # joins, checks sha256, installs, checks CUDA
    eval "$(python3 bench/gpu/device.py env)"    # the CUDA 13 libraries on LD_LIBRARY_PATH
Run it with the machine's torch Python (/opt/torch/.venv/bin/python). The venv
(/tmp/phi3v_gpu/venv) sees that Python's packages (torch, transformers, onnx, numpy, the CUDA 13
libraries) and adds onnxruntime-gpu, onnxruntime-genai-cuda and the ROS 2 wheels. /tmp lasts only
while the machine stays warm.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile

ROOT = '/tmp/phi3v_gpu'
PARTS = os.path.join(ROOT, 'parts')
VENV = os.path.join(ROOT, 'venv')
MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'wheels', 'manifest.json')


def receive(part: str) -> None:
    os.makedirs(PARTS, exist_ok=True)
    shutil.copy(part, PARTS)
    print(f'received {os.path.basename(part)}; have {sorted(os.listdir(PARTS))}')


def cuda_library_dirs() -> list:
    """
    List the lib folders of the nvidia-*-cu13 pip packages of the machine's Python.

    They hold the CUDA 13 runtime, cuDNN...
    """
    site = sysconfig.get_paths()['purelib']
    return sorted(glob.glob(os.path.join(site, 'nvidia', '*', 'lib')))


def install() -> None:
    with open(MANIFEST) as f:
        manifest = json.load(f)
    bundle = os.path.join(ROOT, 'bundle.tar')
    digest = hashlib.sha256()
    with open(bundle, 'wb') as out:
        for part in manifest['parts']:
            with open(os.path.join(PARTS, part), 'rb') as f:
                block = f.read()
            digest.update(block)
            out.write(block)
    if digest.hexdigest() != manifest['bundle_sha256']:
        sys.exit(f'bundle sha256 {digest.hexdigest()} != {manifest["bundle_sha256"]}: '
                 'a part is damaged')
    wheels = os.path.join(ROOT, 'wheels')
    with tarfile.open(bundle) as tar:
        tar.extractall(wheels, filter='data')   # no links, no paths out of the folder
    subprocess.run([sys.executable, '-m', 'venv', VENV], check=True)
    # A venv made from a venv sees only the base interpreter's packages: point it at this Python's
    # site-packages (torch, transformers, onnx, numpy of the machine) with a .pth line.
    venv_site = subprocess.run([os.path.join(VENV, 'bin', 'python'), '-c',
                                'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                               capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(venv_site, 'machine_site_packages.pth'), 'w') as f:
        f.write(sysconfig.get_paths()['purelib'] + '\n')
    subprocess.run([os.path.join(VENV, 'bin', 'pip'), 'install', '-q', '--no-index', '--no-deps',
                    *sorted(glob.glob(os.path.join(wheels, '*.whl')))], check=True)
    library_path = cuda_library_dirs() + [os.environ.get('LD_LIBRARY_PATH', '')]
    env = {'LD_LIBRARY_PATH': ':'.join(library_path)}
    with open(os.path.join(ROOT, 'env.json'), 'w') as f:
        json.dump(env, f)
    check = ('import onnxruntime as ort, onnxruntime_genai as og, rclpy;'
             'print("onnxruntime", ort.__version__, ort.get_available_providers());'
             'print("onnxruntime-genai", og.__version__, "cuda", og.is_cuda_available())')
    subprocess.run([os.path.join(VENV, 'bin', 'python'), '-c', check], check=True,
                   env={**os.environ, **env})


def main() -> int:
    if sys.argv[1:2] == ['receive']:
        receive(sys.argv[2])
    elif sys.argv[1:2] == ['install']:
        install()
    elif sys.argv[1:2] == ['env']:     # eval "$(python3 bench/gpu/device.py env)"
        print(f'export LD_LIBRARY_PATH={":".join(cuda_library_dirs())}:${{LD_LIBRARY_PATH:-}}')
    else:
        sys.exit(__doc__)
    return 0


if __name__ == '__main__':
    sys.exit(main())
