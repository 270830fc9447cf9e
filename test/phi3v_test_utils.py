"""Helpers shared by the tests (imported as a plain module: pytest puts test/ on sys.path)."""
import dataclasses
import json
import pathlib
import shutil
from typing import Any

import numpy as np


@dataclasses.dataclass
class ImageMsg:
    """Stand-in for sensor_msgs/Image: the fields the converters read, of any type."""

    encoding: Any
    height: Any
    width: Any
    step: Any
    data: Any
    is_bigendian: Any = 0


@dataclasses.dataclass
class CompressedMsg:
    """Stand-in for sensor_msgs/CompressedImage."""

    format: Any  # noqa: A003 - mirrors sensor_msgs/CompressedImage.format
    data: Any


def gradient_image(height, width, seed=0):
    """Draw a deterministic RGB test picture (smooth gradients plus a seeded block pattern)."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    image = np.stack([np.broadcast_to(y, (height, width)), np.broadcast_to(x, (height, width)),
                      np.full((height, width), 128, np.float32)], axis=-1)
    blocks = rng.integers(0, 255, (4, 4, 3)).astype(np.float32)
    reps = (-(-height // 4), -(-width // 4), 1)
    image = 0.5 * image + 0.5 * np.tile(blocks.repeat(1, 0), reps)[:height, :width]
    return np.ascontiguousarray(image.astype(np.uint8))


# -- model folders and installs users get wrong ---------------------------------------------------

LFS_POINTER = (b'version https://git-lfs.github.com/spec/v1\n'
               b'oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n'
               b'size 2090000000\n')


def lfs_pointer_model(tiny_model, target, names=('text.onnx', 'tokenizer.json')):
    """Copy the tiny model to target with the named files replaced by Git LFS pointers."""
    shutil.copytree(tiny_model, target)
    for name in names:
        (pathlib.Path(target) / name).write_bytes(LFS_POINTER)
    return pathlib.Path(target)


def may2024_model(tiny_model, target):
    """
    Copy the tiny model to target with the genai_config.json of the May-2024 exports.

    Their vision output is named visual_features and the embedding takes input_ids only: the one
    layout onnxruntime-genai 0.3/0.4 parse (src/config.cpp of v0.4.0), refused since 0.5.
    """
    shutil.copytree(tiny_model, target)
    path = pathlib.Path(target) / 'genai_config.json'
    config = json.loads(path.read_text())
    config['model']['vision']['outputs'] = {'visual_features': 'image_features'}
    del config['model']['embedding']['inputs']['image_features']
    path.write_text(json.dumps(config, indent=4))
    return pathlib.Path(target)


def broken_genai_install(root):
    """
    Write a package folder onnxruntime_genai whose import fails on a missing CUDA library.

    What a wheel built for another JetPack does on import (its C extension cannot find libcudnn);
    put root first on PYTHONPATH to shadow the real package. Returns root.
    """
    package = pathlib.Path(root) / 'onnxruntime_genai'
    package.mkdir(parents=True)
    (package / '__init__.py').write_text(
        "raise ImportError('libcudnn.so.9: cannot open shared object file: "
        "No such file or directory')\n")
    return pathlib.Path(root)


# A complete 1 x 1 GIF89a: OpenCV writes GIF only from 4.12 (the Python 3.10 leg has 4.11, built
# for numpy 1), and the tests of "not PNG or JPEG" bytes need one either way.
ONE_PIXEL_GIF = (b'GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00'
                 b'\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;')


def genai_then_engine_error(model, genai_error, genai_type=Exception):
    """
    Check onnxruntime-genai's own error on the folder model (regex genai_error), return ours.

    The pair shows what a user gets without phi3v_ros's check and what the check says instead.
    genai_type: Exception where 0.4-0.6 may run (they raise og.OrtException, an Exception only).
    """
    import onnxruntime_genai as og
    import pytest
    from phi3v_ros.engine.engine import Engine, EngineConfig
    from phi3v_ros.base.errors import ModelLoadError
    with pytest.raises(genai_type, match=genai_error):
        og.Model(str(model))
    with pytest.raises(ModelLoadError) as info:
        Engine(EngineConfig(model_path=str(model), provider='cpu'))
    return str(info.value)


class SettableClock:
    """A clock in seconds that stands still until a test sets it (FrameAge's clock_s)."""

    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now
