"""
What each onnxruntime-genai release can do for Phi-3-vision, and errors that lead to one that can.

0.2 and older have no multimodal processor, 0.3 mis-sizes portrait images (both refused), 0.4
reads only the May-2024 model folders and has no og.Config (it runs the provider its
genai_config.json lists), 0.5 and later read only the Nov-2024 re-exports. The engine adapts to
the rest (see engine.py); this module holds the checks, so that tools can use them without the
engine's imports.
"""
from __future__ import annotations

import os
import re

from phi3v_ros.base.errors import ModelLoadError
from phi3v_ros.engine import model_paths


def check_genai_release(og) -> None:
    """
    Raise ModelLoadError leading to a working release if ``og`` cannot run Phi-3-vision.

    0.2 and older have no multimodal processor (``og.Model`` refuses a phi3v genai_config.json:
    "Unknown value: inputs_embeds"). 0.3 has one, but its HD transform pads only the height:
    a portrait image whose resized width is no multiple of 336 gets a wrong crop grid and image
    token count (a frame 1000 high and 999 wide: 2,381 prompt tokens where 0.4-0.18 make 2,525;
    fixed in 0.4).
    """
    version = getattr(og, '__version__', 'unknown')
    fix = ('install onnxruntime-genai >= 0.4 (`pip install -U onnxruntime-genai`; on a Jetson '
           '`ros2 run phi3v_ros build_genai_wheel --install`)')
    if not hasattr(og, 'Images') or not hasattr(og.Model, 'create_multimodal_processor'):
        raise ModelLoadError(f'onnxruntime-genai {version} is too old for Phi-3-vision (it has '
                             f'no multimodal processor): {fix}')
    if version_tuple(version) < (0, 4):
        raise ModelLoadError(f'onnxruntime-genai {version} is too old for phi3v_ros: its image '
                             f'transform mis-sizes portrait images (it pads only their height): '
                             f'{fix}')


def folder_layout_error(model_path: str, model_section: dict, genai_version: str) -> str:
    """
    Say why this release cannot read the folder's layout and what to do ('' when it can).

    The May-2024 exports (vision output ``visual_features``) load only in 0.4 (and 0.3), the
    Nov-2024 re-exports (``image_features``) only in 0.5 and later: each release refuses the
    other's keys with a bare ``Unknown value``, checked here before onnxruntime-genai reads it.
    """
    vision = model_section.get('vision')
    outputs = vision.get('outputs') if isinstance(vision, dict) else None
    outputs = outputs if isinstance(outputs, dict) else {}
    old_release = version_tuple(genai_version) < (0, 5)
    if 'visual_features' in outputs and not old_release:
        instead = model_paths.nov2024_replacement(model_path)
        return (f'{model_path!r} is a May-2024 Phi-3-vision export (its vision output is named '
                f'"visual_features"), which onnxruntime-genai {genai_version} cannot read (it '
                'fails with `Unknown value "visual_features"`): only 0.4 (and 0.3) read it. Use '
                f'the Nov-2024 re-export instead, {instead.repo_id} {instead.folder}: '
                f'`{model_paths.fetch_command(str(instead.local_path()))}` downloads it to '
                f'{instead.local_path()}; or install onnxruntime-genai 0.4.0 for this folder')
    if 'image_features' in outputs and old_release:
        return (f'{model_path!r} is a Nov-2024 Phi-3-vision re-export (its vision output is '
                f'named "image_features"), which onnxruntime-genai {genai_version} cannot read '
                '(it fails with `Unknown value: image_features`): install onnxruntime-genai '
                '>= 0.5 (`pip install -U onnxruntime-genai`), or download the May-2024 export '
                'this release reads (`ros2 run phi3v_ros fetch_model` picks it)')
    return ''


def version_tuple(version: str) -> tuple:
    """
    Return the release numbers of a version string: '0.5.2' -> (0, 5, 2), '0.5rc1' -> (0, 5).

    Each piece counts by its leading digits only (a pre-release tag ends the number); a version
    that starts with no number ('unknown') is taken for a current release: (999,).
    """
    numbers = []
    for piece in str(version).split('.')[:3]:
        digits = re.match(r'\d+', piece)
        if digits is None:
            break
        numbers.append(int(digits.group()))
        if digits.end() < len(piece):   # '5rc1': the rest is a pre-release tag
            break
    return tuple(numbers) if numbers else (999,)


def listed_provider(decoder_section: dict) -> str:
    """Return the provider genai_config.json's decoder session options list first (cpu: none)."""
    options = decoder_section.get('session_options', {}).get('provider_options', [])
    for entry in options if isinstance(options, list) else []:
        if isinstance(entry, dict) and entry:
            return str(next(iter(entry)))
    return 'cpu'


def provider_without_config(config, resolved: str, listed: str,
                            genai_version: str) -> str:
    """
    Return the provider a release without og.Config (before 0.5) runs, or raise ModelLoadError.

    Such a release cannot override genai_config.json: it runs the provider listed there, with the
    device and CUDA-graph options written there.
    """
    why = (f'onnxruntime-genai {genai_version} cannot set the provider (og.Config came in '
           f'0.5): it runs what {os.path.join(config.model_path, "genai_config.json")} lists '
           f'({listed})')
    fix = 'or install onnxruntime-genai >= 0.5 with a Nov-2024 model folder'
    if config.provider not in ('auto', listed):
        raise ModelLoadError(f'provider is {resolved!r} but {why}: set provider to {listed} or '
                             f'auto, change provider_options there, {fix}')
    if config.device_id != 0 or config.cuda_graph:
        raise ModelLoadError(f'device_id and cuda_graph cannot be set: {why}: write them into '
                             f'its provider_options, {fix}')
    return listed
