"""
The model's inputs built by phi3v_ros itself, as onnxruntime-genai's processor builds them.

The processor takes a prompt and encoded image bytes (PNG/JPEG), decodes them again and runs
onnxruntime-extensions' Phi3ImageTransform, whose crop budget is fixed at 16. Here the same
tensors come from the prompt and the RGB frame (hd_transform.prepare_image), with no image
encoding in between and a budget of 1-16 crops:

- ``input_ids`` int32 [1, S]: the text between image tags tokenized piece by piece with the
  model's tokenizer (as the processor does: src/models/phi_image_processor.cpp), image k's slot as
  N copies of -k; int64 ids would be misread;
- ``pixel_values`` [images, crops, 3, 336, 336], float32 (or float16 for an fp16 vision graph:
  nothing casts NamedTensors for us);
- ``image_sizes`` int64 [images, 2] (each padded size [H, W]) and ``num_image_tokens`` int64
  [images, 1], where each N must equal the rows the vision graph emits for that image, or
  generation fails. Several images are stacked with zero crops up to the largest crop count, as
  the processor does (its pixel_values are [images, 17, ...]).

NamedTensors filled from numpy came in onnxruntime-genai 0.7 (0.4-0.6 cannot construct them):
takes_own_inputs() says whether the installed release can; the engine falls back to the processor
where it cannot.
"""
from __future__ import annotations

import re
from typing import Callable, Optional, Sequence

import numpy as np

from phi3v_ros.engine.hd_transform import ImageInputs

# Image tags as the processor finds them (src/models/phi_image_processor.cpp).
IMAGE_TAG = re.compile(r'<\|image_(\d+)\|>')
# ONNX Runtime on a static input dimension: "Got invalid dimensions for input: pixel_values for the
# following indices\n index: 1 Got: 13 Expected: 17"
_FIXED_CROPS = re.compile(r'invalid dimensions for input: pixel_values.*?index: 1 Got: \d+ '
                          r'Expected: (\d+)', re.DOTALL)
# What ONNX Runtime says when a graph cannot take the tensors it is given (their shape, rank or
# type), as opposed to a failure while running them: "Got invalid dimensions for input", "The
# input tensor cannot be reshaped to the requested shape", "Unexpected input data type", "Invalid
# rank", "Invalid Feed Input Name", broadcasting and matmul shape errors.
_REFUSED_INPUTS = re.compile(
    r'invalid dimensions|cannot be reshaped|input data type|invalid rank|invalid feed input|'
    r'invalid input|shape mismatch|incompatible dimensions|not broadcastable|'
    r'computed output shape|dimension mismatch|does not match.*shape|shape.*does not match',
    re.IGNORECASE)
# Failures of the moment, whatever the inputs: out of GPU or host memory, a CUDA error. A prompt
# failing so fails alone; it says nothing about what the model takes.
_TRANSIENT = re.compile(
    r'out of memory|failed to allocate|bad_alloc|cudaMalloc|CUDA failure|CUDA error|'
    r'CUBLAS_STATUS|CUDNN_STATUS|resource exhausted|no space left', re.IGNORECASE)


def takes_own_inputs(og) -> bool:
    """Return True when this onnxruntime-genai builds NamedTensors from numpy arrays (0.7+)."""
    try:
        named = og.NamedTensors()
        named['input_ids'] = np.zeros((1, 1), np.int32)
    except Exception:   # noqa: BLE001 - 0.4-0.6: "No constructor defined!" (TypeError), or others
        return False
    return True


def prompt_pieces(prompt: str) -> list:
    """
    Split a prompt at its image tags into (text, image id) pairs, as the processor tokenizes it.

    The text pieces are those of C++'s regex token iterator: a prompt that ends with a tag has no
    empty last piece. The image id of the last pair is None.
    """
    texts = IMAGE_TAG.split(prompt)[::2]
    ids = [int(found) for found in IMAGE_TAG.findall(prompt)]
    if len(texts) > 1 and not texts[-1]:
        texts.pop()
    return [(text, ids[i] if i < len(ids) else None) for i, text in enumerate(texts)]


def prompt_token_ids(encode: Callable[[str], Sequence[int]], prompt: str,
                     image_tokens: Sequence[int]) -> np.ndarray:
    """
    Return input_ids int32 [1, S] for prompt: its text tokenized, image k's slot -k x N_k.

    image_tokens[k - 1] is image k's token count. Raises ValueError when a tag names no image or
    the images are not all tagged, as the processor does.
    """
    pieces = prompt_pieces(prompt)
    tagged = {image_id for _, image_id in pieces if image_id is not None}
    if tagged != set(range(1, len(image_tokens) + 1)):
        raise ValueError(f'the prompt tags images {sorted(tagged)} but {len(image_tokens)} '
                         'images are given')
    ids = []
    for text, image_id in pieces:
        ids.extend(int(token) for token in encode(text))
        if image_id is not None:
            ids.extend([-image_id] * int(image_tokens[image_id - 1]))
    return np.asarray([ids], dtype=np.int32)


class InputBuilder:
    """Build the NamedTensors of one request for Generator.set_inputs (or GeneratorParams')."""

    def __init__(self, og, tokenizer):
        self._og = og
        self._tokenizer = tokenizer
        # The vision graph's pixel_values type: float32 for the published int4 models; the engine
        # switches to float16 when set_inputs says the type is wrong (an fp16 vision graph).
        self.pixel_dtype = np.float32
        # None: as many crops as the image has. A vision graph that declares a fixed crop count
        # (the processor's 17) gets zero crops appended up to it, as the processor does.
        self.pad_crops_to: Optional[int] = None

    @staticmethod
    def wants_float16(error: BaseException) -> bool:
        """Return True when set_inputs refused the pixel values for not being float16."""
        text = str(error).lower()
        return 'unexpected input data type' in text and 'expected: (tensor(float16))' in text

    @staticmethod
    def refuses_inputs(error: BaseException) -> bool:
        """
        Return True when the model refused the tensors built here for what they are.

        Only such an error means that genai's processor (17 crops, its own tensors) may be needed
        for this model; an out-of-memory or CUDA error is not one, even at the first image.
        """
        text = str(error)
        return bool(_REFUSED_INPUTS.search(text)) and not _TRANSIENT.search(text)

    @staticmethod
    def fixed_crop_count(error: BaseException) -> Optional[int]:
        """Return the crop count the vision graph insists on, if set_inputs said so, else None."""
        found = _FIXED_CROPS.search(str(error))
        return int(found.group(1)) if found else None

    def build(self, prompt: str, images: Sequence[ImageInputs], pixel_dtype=None,
              pad_crops_to: Optional[int] = None) -> tuple:
        """
        Return (NamedTensors, prompt tokens, image tokens) for prompt and its images (maybe none).

        Images of different crop counts are stacked with zero crops appended to the largest
        count, as the processor pads them; the vision graph reads each image's real crops from
        image_sizes. pixel_dtype and pad_crops_to override self.pixel_dtype and
        self.pad_crops_to for this call.
        """
        image_tokens = [image.num_image_tokens for image in images]
        input_ids = prompt_token_ids(self._tokenizer.encode, prompt, image_tokens)
        named = self._og.NamedTensors()
        named['input_ids'] = input_ids
        if images:
            crops = [image.pixel_values.shape[0] for image in images]
            total = max(max(crops), pad_crops_to or self.pad_crops_to or 0)
            dtype = pixel_dtype or self.pixel_dtype
            crop_shape = images[0].pixel_values.shape[1:]
            if len(images) == 1 and total == crops[0]:   # no copy when the type is already right
                pixel_values = np.ascontiguousarray(images[0].pixel_values[np.newaxis],
                                                    dtype=dtype)
            else:
                pixel_values = np.zeros((len(images), total) + crop_shape, dtype=dtype)
                for index, image in enumerate(images):
                    pixel_values[index, :crops[index]] = image.pixel_values
            named['pixel_values'] = pixel_values
            named['image_sizes'] = np.asarray([image.image_size for image in images],
                                              dtype=np.int64)
            named['num_image_tokens'] = np.asarray([[count] for count in image_tokens],
                                                   dtype=np.int64)
        return named, int(input_ids.shape[1]), int(sum(image_tokens))
