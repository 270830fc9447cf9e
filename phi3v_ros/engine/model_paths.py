"""
Where the published Phi-3-vision ONNX models live on disk.

ROS-free; shared by the node and fetch_model. ``fetch_model`` downloads a model folder of a Hugging
Face repository into ``<model root>/<repository name>/<folder>``; the model root is
``~/.cache/phi3v_ros/models`` unless the environment variable ``PHI3V_ROS_MODEL_DIR`` names
another.
"""
from __future__ import annotations

from dataclasses import dataclass
import os
from pathlib import Path
from typing import List, Optional

MODEL_DIR_ENV = 'PHI3V_ROS_MODEL_DIR'
_DEFAULT_ROOT = '~/.cache/phi3v_ros/models'
DEFAULT_MODEL_ROOT = Path(os.environ.get(MODEL_DIR_ENV) or _DEFAULT_ROOT).expanduser()


@dataclass(frozen=True)
class ModelFolder:
    """One published model folder: the repository and the folder inside it."""

    variant: str            # int4 (CUDA), fp16 (CUDA), cpu (CPU int4); phi3.5-int4, phi3.5-cpu
    repo_id: str
    folder: str             # path inside the repository
    size_gb: float
    export: str             # may2024 or nov2024

    @property
    def repo_name(self) -> str:
        return self.repo_id.split('/')[-1]

    @property
    def for_cpu(self) -> bool:
        return self.variant.endswith('cpu')

    def local_path(self, root: Optional[os.PathLike] = None) -> Path:
        return Path(root if root is not None else model_root()) / self.repo_name / self.folder


# The Nov-2024 re-exports (onnxruntime-genai 0.5 and newer) and the May-2024 exports (0.3 / 0.4).
NOV2024_INT4 = ModelFolder('int4', 'microsoft/Phi-3-vision-128k-instruct-onnx',
                           'gpu/gpu-int4-rtn-block-32', 2.6, 'nov2024')
NOV2024_CPU = ModelFolder('cpu', 'microsoft/Phi-3-vision-128k-instruct-onnx',
                          'cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4', 3.2, 'nov2024')
MAY2024_INT4 = ModelFolder('int4', 'microsoft/Phi-3-vision-128k-instruct-onnx-cuda',
                           'cuda-int4-rtn-block-32', 2.6, 'may2024')
MAY2024_FP16 = ModelFolder('fp16', 'microsoft/Phi-3-vision-128k-instruct-onnx-cuda',
                           'cuda-fp16', 8.0, 'may2024')
MAY2024_CPU = ModelFolder('cpu', 'microsoft/Phi-3-vision-128k-instruct-onnx-cpu',
                          'cpu-int4-rtn-block-32-acc-level-4', 3.2, 'may2024')
# Phi-3.5-vision (same phi3v model type and layout as the Nov-2024 re-exports; published Nov 2024).
# Folder names and sizes as listed by the repository's file tree on huggingface.co.
PHI35_INT4 = ModelFolder('phi3.5-int4', 'microsoft/Phi-3.5-vision-instruct-onnx',
                         'gpu/gpu-int4-rtn-block-32', 2.6, 'nov2024')
PHI35_CPU = ModelFolder('phi3.5-cpu', 'microsoft/Phi-3.5-vision-instruct-onnx',
                        'cpu_and_mobile/cpu-int4-rtn-block-32-acc-level-4', 3.2, 'nov2024')
KNOWN_FOLDERS = (NOV2024_INT4, NOV2024_CPU, MAY2024_INT4, MAY2024_FP16, MAY2024_CPU, PHI35_INT4,
                 PHI35_CPU)

# A Git LFS pointer file (what a clone without git-lfs leaves instead of the data): a small text
# file (the specification caps it at 1024 bytes) starting with this line.
LFS_POINTER_PREFIX = b'version https://git-lfs.github.com/spec/'
LFS_POINTER_MAX_BYTES = 1024


def model_root() -> Path:
    """
    Return the model root now.

    Reads PHI3V_ROS_MODEL_DIR at call time, unlike DEFAULT_MODEL_ROOT.
    """
    return Path(os.environ.get(MODEL_DIR_ENV) or _DEFAULT_ROOT).expanduser()


def default_model_path(provider: str = 'auto') -> str:
    """
    Return the node's ``model_path`` default for a provider.

    The CPU int4 folder (``fetch_model --variant cpu``) for provider cpu, else the CUDA int4 folder
    ``fetch_model`` writes by default.
    """
    return str((NOV2024_CPU if provider == 'cpu' else NOV2024_INT4).local_path())


def is_lfs_pointer(path: os.PathLike) -> bool:
    """Tell whether the file at path is a Git LFS pointer instead of the file's content."""
    try:
        if os.path.getsize(path) > LFS_POINTER_MAX_BYTES:
            return False
        with open(path, 'rb') as handle:
            return handle.read(len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX
    except OSError:
        return False


def lfs_pointer_files(folder: os.PathLike) -> List[str]:
    """Return the names of the files in folder (not below it) that are Git LFS pointers, sorted."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        return []
    return [entry.name for entry in entries
            if entry.is_file() and is_lfs_pointer(entry.path)]


def model_folders_below(path: os.PathLike, depth: int = 2, limit: int = 5) -> List[str]:
    """
    Return up to limit folders one to depth levels below path that hold a genai_config.json.

    For a model_path that names the parent of the model folder (the repository's folder, or its
    gpu/ folder) these are the folders meant. Hidden folders are skipped.
    """
    found: List[str] = []
    level = [str(path)]
    for _ in range(depth):
        below = []
        for folder in level:
            try:
                entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
            except OSError:
                continue
            below += [entry.path for entry in entries
                      if not entry.name.startswith('.') and entry.is_dir()]
        found += [folder for folder in below
                  if os.path.isfile(os.path.join(folder, 'genai_config.json'))]
        level = below
    return found[:limit]


def _folder_for(path: str) -> Optional[ModelFolder]:
    normalized = str(path).replace('\\', '/').rstrip('/')
    for folder in KNOWN_FOLDERS:
        if normalized.endswith(f'{folder.repo_name}/{folder.folder}'):
            return folder
    return None


def nov2024_replacement(path: str) -> ModelFolder:
    """Return the Nov-2024 folder to use instead of the May-2024 export at path (CPU for CPU)."""
    known = _folder_for(path)
    if known is not None:
        return NOV2024_CPU if known.for_cpu else NOV2024_INT4
    return NOV2024_CPU if 'cpu' in os.path.basename(str(path).rstrip('/\\')) else NOV2024_INT4


def fetch_command(path: Optional[str] = None) -> str:
    """Return the ``ros2 run phi3v_ros fetch_model ...`` command writing the model to ``path``."""
    command = 'ros2 run phi3v_ros fetch_model'
    if path is None:
        return command
    known = _folder_for(path)
    if known is None:
        return command
    if known.variant != 'int4':
        command += f' --variant {known.variant}'
    # <root>/<repo>/<folder>
    root = Path(str(path)).expanduser().parents[len(Path(known.folder).parts)]
    if root.resolve() != model_root().resolve():
        command += f' --dest {root}'
    return command


def missing_model_hint(path: str) -> str:
    """
    One sentence telling the user the command that gets the model ``path`` should hold.

    It starts in lower case because callers append it to their own message ("...; download ...").
    """
    known = _folder_for(path)
    if known is not None:
        return (f'download the model (about {known.size_gb:g} GB) into {path} with '
                f'`{fetch_command(path)}`')
    return ('download the published model with `ros2 run phi3v_ros fetch_model` and set '
            f'model_path to the folder it prints (by default {default_model_path()})')
