"""
Download the published Phi-3-vision ONNX model and print the path to pass as ``model_path``.

Usage::

    # CUDA int4 (about 2.6 GB), the node's default folder
    ros2 run phi3v_ros fetch_model
    # CPU int4, for a machine without a GPU
    ros2 run phi3v_ros fetch_model --variant cpu
    ros2 run phi3v_ros fetch_model --variant fp16 --dest /data/models
    # Phi-3.5-vision (same model type, better answers): CUDA int4 or CPU int4
    ros2 run phi3v_ros fetch_model --variant phi3.5-int4

The folder matches the installed onnxruntime-genai: releases before 0.5 read the May-2024 exports
(microsoft/Phi-3-vision-128k-instruct-onnx-cuda, -onnx-cpu), 0.5 and later the Nov-2024 re-exports
(microsoft/Phi-3-vision-128k-instruct-onnx); Phi-3.5-vision
(microsoft/Phi-3.5-vision-instruct-onnx, Nov 2024) needs 0.5 or later. Downloads use
huggingface_hub, which resumes an interrupted download and shows progress bars; the files land in
``DEST/<repository>/<folder>``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
import sys
from typing import Callable, List, Optional, Sequence, Tuple

from phi3v_ros.engine.genai_releases import version_tuple
from phi3v_ros.engine.model_paths import (default_model_path, lfs_pointer_files, MAY2024_CPU,
                                          MAY2024_FP16, MAY2024_INT4, MODEL_DIR_ENV, model_root,
                                          ModelFolder, NOV2024_CPU, NOV2024_INT4, PHI35_CPU,
                                          PHI35_INT4)
from phi3v_ros.tools.genai_wheel.platform import free_disk_bytes

GENAI_DISTRIBUTIONS = ('onnxruntime-genai-cuda', 'onnxruntime-genai', 'onnxruntime-genai-directml')
VARIANTS = ('int4', 'fp16', 'cpu', 'phi3.5-int4', 'phi3.5-cpu')
PHI35 = {'phi3.5-int4': PHI35_INT4, 'phi3.5-cpu': PHI35_CPU}
GIB = 1024 ** 3


class FetchError(RuntimeError):
    """The model cannot be fetched or is not usable; the message says what to do."""


def installed_genai(
        version_of: Optional[Callable[[str], str]] = None) -> Optional[Tuple[str, str]]:
    """Return (distribution, version) of the installed onnxruntime-genai (CUDA first), or None."""
    if version_of is None:
        from importlib import metadata

        def version_of(name):
            return metadata.version(name)
    for name in GENAI_DISTRIBUTIONS:
        try:
            return name, version_of(name)
        except Exception:   # PackageNotFoundError, or a broken installation
            continue
    return None


def select_folder(variant: str, genai_version: Optional[str]) -> ModelFolder:
    """Return the published folder this onnxruntime-genai loads, or raise FetchError saying why."""
    if variant not in VARIANTS:
        raise FetchError(f'unknown variant {variant!r}: choose one of {", ".join(VARIANTS)}')
    version = version_tuple(genai_version) if genai_version else None
    if version is not None and version < (0, 4):
        # 0.3 reads the May-2024 folders but the engine refuses it (engine.check_genai_release)
        raise FetchError(f'onnxruntime-genai {genai_version} cannot run phi3v_ros (0.4 is the '
                         'oldest it runs; 0.2 and older have no Phi-3-vision support, 0.3 '
                         'mis-sizes portrait images): install 0.4 or newer (`pip install -U '
                         'onnxruntime-genai`; on a Jetson: ros2 run phi3v_ros build_genai_wheel '
                         '--install), then run fetch_model again')
    if variant in PHI35:
        if version is not None and version < (0, 5):
            raise FetchError(f'Phi-3.5-vision ({PHI35[variant].repo_id}) is exported only for '
                             f'onnxruntime-genai 0.5 and newer, not {genai_version}: '
                             'install a newer one, or use --variant int4 / cpu (Phi-3-vision)')
        return PHI35[variant]
    if version is not None and version < (0, 5):
        return {'int4': MAY2024_INT4, 'fp16': MAY2024_FP16, 'cpu': MAY2024_CPU}[variant]
    if variant == 'fp16':
        raise FetchError(
            f'the only published fp16 Phi-3-vision export ({MAY2024_FP16.repo_id}, '
            f'{MAY2024_FP16.folder}, May 2024) loads only with onnxruntime-genai 0.4, while '
            + (f'the installed {genai_version}' if genai_version else 'the assumed 0.5+ (none is '
                                                                      'installed here)')
            + ' reads only the Nov-2024 re-exports, which have no fp16 folder: use --variant '
              'int4, or pass --genai-version 0.4.0 if the node really runs 0.4')
    return NOV2024_CPU if variant == 'cpu' else NOV2024_INT4


def validate_model_folder(path: Path) -> List[str]:
    """List what is missing or broken in a downloaded model folder (empty: it looks loadable)."""
    path = Path(path)
    problems = []
    if not path.is_dir():
        return [f'{path} does not exist']
    config_path = path / 'genai_config.json'
    for name in ('genai_config.json', 'processor_config.json', 'tokenizer.json'):
        if not (path / name).is_file():
            problems.append(f'{name} is missing')
    onnx_files = sorted(path.glob('*.onnx'))
    if not onnx_files:
        problems.append('no .onnx files')
    referenced: List[str] = []
    if config_path.is_file():
        try:
            model = json.loads(config_path.read_text(encoding='utf-8')).get('model', {})
            for part in ('decoder', 'vision', 'embedding'):
                filename = (model.get(part) or {}).get('filename')
                if filename:
                    referenced.append(str(filename))
        except (ValueError, AttributeError, TypeError, RecursionError) as exc:
            problems.append(f'genai_config.json is not valid JSON ({exc})')
    for filename in referenced:
        if not (path / filename).is_file():
            problems.append(f'{filename} (named in genai_config.json) is missing')
    for name in lfs_pointer_files(path):
        problems.append(f'{name} is a Git LFS pointer, not the weights (cloned without git-lfs?)')
    return problems


def hf_download(repo_id: str, allow_patterns: List[str], local_dir: str,
                revision: Optional[str] = None) -> str:
    """Download for real: huggingface_hub resumes partial files and shows progress bars."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise FetchError(f'huggingface_hub is not installed ({exc}): install it with '
                         f'`{sys.executable} -m pip install huggingface_hub`, then rerun') from exc
    kwargs = {'allow_patterns': allow_patterns, 'local_dir': local_dir}
    if revision:
        kwargs['revision'] = revision
    return snapshot_download(repo_id, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='fetch_model',
        description='Download the published Phi-3-vision ONNX model that the installed '
                    'onnxruntime-genai loads, and print the folder to pass as model_path. '
                    'Rerunning resumes.')
    parser.add_argument('--variant', choices=VARIANTS, default='int4',
                        help='Phi-3-vision: int4: CUDA int4, about 2.6 GB (default); fp16: '
                             'CUDA fp16, about 8 GB (only onnxruntime-genai 0.4); cpu: CPU int4, '
                             'about 3.2 GB, for machines without a GPU. Phi-3.5-vision (same '
                             'model type, better answers; onnxruntime-genai 0.5+): phi3.5-int4 '
                             '(CUDA, about 2.6 GB), phi3.5-cpu (about 3.2 GB)')
    parser.add_argument('--dest',
                        help=f'model root folder (default {model_root()}, or ${MODEL_DIR_ENV}); '
                             f'files go to DEST/<repository>/<folder>')
    parser.add_argument('--genai-version',
                        help='choose the folder for this onnxruntime-genai version instead of '
                             'the installed one')
    parser.add_argument('--revision',
                        help='a Hugging Face revision (branch, tag or commit) to pin')
    parser.add_argument('--dry-run', action='store_true',
                        help='print what would be downloaded, and where')
    return parser


def genai_has_cuda() -> Optional[bool]:
    """
    Return og.is_cuda_available() of the installed onnxruntime-genai, or None if it cannot say.

    The distribution's name does not tell: a wheel built here (build_genai_wheel) may be named
    onnxruntime-genai and have CUDA. (The call reports how the release was built, not whether
    its CUDA libraries load.)
    """
    try:
        import onnxruntime_genai as og
        return bool(og.is_cuda_available())
    except Exception:   # noqa: BLE001 - not installed, fails to load, a release without the call
        return None


def main(argv: Optional[Sequence[str]] = None, download: Callable[..., str] = hf_download,
         version_of: Optional[Callable[[str], str]] = None, out: Callable[[str], None] = print,
         disk_free: Callable[[Path], Optional[int]] = None,
         cuda_available: Callable[[], Optional[bool]] = genai_has_cuda) -> int:
    args = build_parser().parse_args(argv)
    genai = None
    if args.genai_version:
        genai_version, genai_source = args.genai_version, '--genai-version'
    else:
        genai = installed_genai(version_of)
        genai_version = genai[1] if genai else None
        genai_source = f'installed {genai[0]}' if genai else 'not installed here'
    try:
        folder = select_folder(args.variant, genai_version)
    except FetchError as exc:
        out(f'error: {exc}')
        return 2
    root = Path(args.dest).expanduser() if args.dest else model_root()
    local_dir = root / folder.repo_name
    target = folder.local_path(root)
    export = ('May-2024 export' if folder.export == 'may2024'
              else 'Phi-3.5-vision export' if folder.variant in PHI35 else 'Nov-2024 re-export')
    out(f'onnxruntime-genai: {genai_version or "none"} ({genai_source}) -> the {export}')
    if genai_version is None:
        out('note: onnxruntime-genai is not installed in this Python; the folder for 0.5 and '
            'newer was chosen (pass --genai-version if the node runs another)')
    if genai and not folder.for_cpu and cuda_available() is False:
        cpu = 'phi3.5-cpu' if folder.variant in PHI35 else 'cpu'
        out(f'note: the installed {genai[0]} has no CUDA (og.is_cuda_available() is False); '
            f'--variant {cpu} is the model made for CPU (on a Jetson, build the CUDA wheel: '
            'ros2 run phi3v_ros build_genai_wheel --install)')
    out(f'model: {folder.repo_id} / {folder.folder} (about {folder.size_gb:g} GB)')
    out(f'into:  {target}')
    if args.dry_run:
        out(f'would call huggingface_hub.snapshot_download({folder.repo_id!r}, '
            f'allow_patterns=[{folder.folder + "/*"!r}], local_dir={str(local_dir)!r})')
        return 0
    if not validate_model_folder(target):
        out('already downloaded and complete.')
        _print_result(target, out)
        return 0
    free = (disk_free or free_disk_bytes)(root)
    if free is not None and free < folder.size_gb * 1.05 * 1e9 - _present_bytes(target):
        out(f'error: only {free / GIB:.1f} GiB free under {root}; the model needs about '
            f'{folder.size_gb:g} GB: free some space or pass --dest on a disk with room')
        return 1
    local_dir.mkdir(parents=True, exist_ok=True)
    try:
        download(folder.repo_id, allow_patterns=[folder.folder + '/*'], local_dir=str(local_dir),
                 revision=args.revision)
    except FetchError as exc:
        out(f'error: {exc}')
        return 1
    except KeyboardInterrupt:
        out('interrupted: run the same command again to resume the download')
        return 130
    except Exception as exc:
        # network errors, missing repository, ...: huggingface_hub raises many kinds
        out(f'error: the download failed ({type(exc).__name__}: {exc}); check the network (and '
            f'HF_ENDPOINT / proxy settings), then run the same command again: it resumes')
        return 1
    problems = validate_model_folder(target)
    if problems:
        out(f'error: the downloaded folder {target} is incomplete: {"; ".join(problems)}: run the '
            f'same command again to resume, or delete the folder to start over')
        return 1
    _print_result(target, out)
    return 0


def _print_result(target: Path, out: Callable[[str], None]) -> None:
    out('')
    out(f'model_path: {target}')
    if str(target) == default_model_path():
        out("(this is the node's default model_path: no parameter needed)")
    elif str(target) == default_model_path('cpu'):
        out("(this is the node's default model_path with provider:=cpu: no model_path needed)")
    else:
        out(f'pass it as the node parameter model_path, e.g. '
            f'ros2 run phi3v_ros vision_qa_node --ros-args -p model_path:={target}')


def _present_bytes(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(f.stat().st_size for f in folder.rglob('*') if f.is_file())


if __name__ == '__main__':
    sys.exit(main())
