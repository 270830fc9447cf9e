"""
Phi-3-vision's image preprocessing (the "HD transform"), from an RGB frame to the model's inputs.

onnxruntime-genai's multimodal processor takes encoded image bytes, decodes them and runs
onnxruntime-extensions' Phi3ImageTransform (shared/api/image_transforms_phi_3.hpp, resampling with
the Pillow port in shared/api/image_resample.c). This module does the same from the uint8 frame the
node already holds, so the frame is never encoded to PNG only to be decoded again:

1. Keep the aspect ratio: with ratio = long side / short side, take the largest scale s with
   s * ceil(s / ratio) <= max_crops, resize the long side to s * 336 px and the short side to
   int(s * 336 / ratio) px (Pillow's bilinear filter, which widens to antialias when shrinking).
2. Pad the short side with white (255) to a multiple of 336 px, centred (an odd padding puts the
   extra line at the bottom or right).
3. Normalise with the CLIP mean and std, channels first.
4. The global view: the padded, normalised planes resized to 336 x 336 (Pillow's bicubic filter,
   antialiasing, on float32 planes).
5. pixel_values = [the global view, then the 336 x 336 crops of the padded image in row order].

A portrait frame is not transposed: the C++ swaps the two target sizes and pads the width instead
of the height, which crop_grid does too.

exact=True reproduces the processor bit for bit: the same coefficients, Pillow's 8-bit fixed
point (22 fractional bits, round half up, clip) for the HD image, and for the global view the same
float32 planes with the weighted sums accumulated in double precision in the same order.
exact=False (the default) resizes the HD image with OpenCV and computes the global view with
float32 matrix products instead, several times faster, within FAST_MAX_ABS_DIFF of the processor
(FAST_ENLARGED_MAX_ABS_DIFF for frames it enlarges; see the constants for what differs and why).

Unlike the processor, pixel_values holds no zero crops after the real ones (the processor always
returns 1 + 16 of them), so a caller feeding a model that wants that shape pads it itself.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import List, Tuple

import cv2
import numpy as np

CROP_SIDE = 336
# The published model's budget, and the only one onnxruntime-genai's processor uses (a constexpr
# in the extensions code, whatever num_crops processor_config.json sets).
MAX_CROPS = 16
TOKENS_PER_CROP = 144
# A crop is 12 x 12 tokens and each row of 12 ends with a newline token: 12 per row of crops and
# 12 for the global view. One more token separates the global view from the crops.
TOKENS_PER_ROW = 12

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
WHITE = 255

# How far exact=False lands from the processor, in normalised units (one 8-bit level is
# 1 / (255 * std): 0.0142 to 0.0150).
#
# Crops of a frame the transform enlarges (or keeps), the usual case for cameras up to 1344 px:
# OpenCV's INTER_LINEAR is Pillow's bilinear filter with the same pixel centres and edge clamping,
# but 11 fractional bits instead of 22 and no rounding to 8 bits between the two passes, so a
# pixel differs by at most one level (the two results are less than 1 apart before rounding).
# The global view uses the processor's weights in float32 (see _global_view_fast), so it only
# carries those one-level differences, amplified by at most the bicubic weights' L1 norm (1.41
# for 2 x 2 crops, less otherwise), plus float32 rounding (about 1e-6):
# 1.41 * 0.0150 = 0.0212. Measured: 0.0150 (crops) and 0.0173 (global view).
FAST_ENLARGED_MAX_ABS_DIFF = 0.022
# Crops of a frame the transform shrinks: Pillow widens its bilinear triangle to f input pixels
# either side of each output (f the shrink factor). OpenCV has no such filter; a Gaussian blur with
# the variance a box lacks, then INTER_AREA (a box f pixels wide), is close on smooth content (a
# level or two) but not on pixel-sized detail. Largest differences measured, over about 1700
# frames (every budget, sizes up to 2200 px, uniform noise, one-pixel checkerboards, gradients):
# 0.45 at one pixel, 0.088 on average over a frame's pixel_values, both on noise or checkerboards.
# These are measurements, not a proof: a frame built against the two kernels' difference could go
# further (bounded only by the pixel range, 3.8), so use exact=True where the bits matter.
FAST_MAX_ABS_DIFF = 0.5
# The mean of |fast - processor| over all values of one frame's pixel_values.
FAST_MEAN_ABS_DIFF = 0.1

# Pillow's fixed point for 8-bit resampling: 32 bits less 8 for the value and 2 for the overshoot
# of filters with negative lobes.
_PRECISION_BITS = 32 - 8 - 2
_HALF = 1 << (_PRECISION_BITS - 1)


@dataclasses.dataclass(frozen=True)
class CropGrid:
    """How a frame is cut: rows x cols crops of 336 px, and its resized size inside the padding."""

    rows: int
    cols: int
    resized_height: int
    resized_width: int

    @property
    def padded_height(self) -> int:
        """Height of the padded image the crops are cut from."""
        return self.rows * CROP_SIDE

    @property
    def padded_width(self) -> int:
        """Width of the padded image the crops are cut from."""
        return self.cols * CROP_SIDE

    @property
    def num_crops(self) -> int:
        """How many crops the grid has, the global view not counted."""
        return self.rows * self.cols

    @property
    def image_tokens(self) -> int:
        """Image tokens the model spends on this grid (the processor's num_image_tokens)."""
        return ((self.num_crops + 1) * TOKENS_PER_CROP + 1
                + (self.rows + 1) * TOKENS_PER_ROW)


@dataclasses.dataclass(frozen=True)
class ImageInputs:
    """The model's image inputs for one frame."""

    # float32 [1 + rows * cols, 3, 336, 336]: the global view, then the crops in row order.
    pixel_values: np.ndarray
    grid: CropGrid

    @property
    def image_size(self) -> Tuple[int, int]:
        """Return (padded height, padded width), the processor's image_sizes row."""
        return (self.grid.padded_height, self.grid.padded_width)

    @property
    def num_image_tokens(self) -> int:
        """Image tokens the model spends on this frame."""
        return self.grid.image_tokens


def _check_max_crops(max_crops) -> int:
    if isinstance(max_crops, bool) or not isinstance(max_crops, (int, np.integer)):
        raise TypeError(f'max_crops must be an int, not {type(max_crops).__name__}')
    if not 1 <= max_crops <= MAX_CROPS:
        raise ValueError(f'max_crops must be in 1..{MAX_CROPS}, not {max_crops}')
    return int(max_crops)


def crop_grid(height: int, width: int, max_crops: int = MAX_CROPS) -> CropGrid:
    """
    Return the crop grid the HD transform gives a height x width frame within max_crops crops.

    Raises ValueError for an empty frame, a budget outside 1..16, or an aspect ratio so extreme
    that the short side would resize to 0 px (the processor fails on those too).
    """
    budget = _check_max_crops(max_crops)
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f'the frame is empty: {height} x {width}')
    long_side, short_side = max(height, width), min(height, width)
    # Double precision, as the C++ computes it (a square frame takes its landscape branch).
    ratio = long_side / short_side
    scale = 1
    while (scale + 1) * math.ceil((scale + 1) / ratio) <= budget:
        scale += 1
    resized_long = scale * CROP_SIDE
    resized_short = int(resized_long / ratio)
    if resized_short < 1:
        raise ValueError(f'a {height} x {width} frame is too elongated for the HD transform: its '
                         f'short side would resize to 0 px')
    padded_short = -(-resized_short // CROP_SIDE)
    if width >= height:
        return CropGrid(padded_short, scale, resized_short, resized_long)
    return CropGrid(scale, padded_short, resized_long, resized_short)


def _check_rgb(rgb) -> np.ndarray:
    if not isinstance(rgb, np.ndarray):
        raise TypeError(f'expected an (H, W, 3) uint8 RGB numpy array, not {type(rgb).__name__}')
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.size == 0:
        raise ValueError(f'expected a non-empty (H, W, 3) uint8 RGB image, got {rgb.dtype} '
                         f'{rgb.shape}')
    # OpenCV wants C-contiguous rows; a view (a crop, a flip) is copied, and nothing writes to it.
    return np.ascontiguousarray(rgb)


def _normalisation_tables() -> List[np.ndarray]:
    """Return, per channel, the normalised float32 value of each 8-bit level, as [1, 256]."""
    # The C++ computes (float(v) / 255.f - mean[k]) / std[k] in float32; the same float32
    # operations on the 256 levels give the same bits and turn normalising into a lookup.
    levels = np.arange(256, dtype=np.float32)
    tables = []
    for mean, std in zip(CLIP_MEAN, CLIP_STD):
        table = (levels / np.float32(255.0) - np.float32(mean)) / np.float32(std)
        table = table.astype(np.float32).reshape(1, 256)
        table.flags.writeable = False
        tables.append(table)
    return tables


_NORMALISED = _normalisation_tables()


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _bicubic(x: np.ndarray) -> np.ndarray:
    # Keys' cubic with a = -0.5, each branch in the C's order of operations.
    x = np.abs(x)
    near = ((1.5 * x - 2.5) * x) * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * -0.5
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


_FILTERS = {'bilinear': (_bilinear, 1.0), 'bicubic': (_bicubic, 2.0)}


@dataclasses.dataclass(frozen=True)
class _Coefficients:
    """Pillow's resampling coefficients for one axis (precompute_coeffs in image_resample.c)."""

    # Output i reads inputs taps[i, :count[i]] with weights[i, :count[i]]; past count the weight is
    # 0 and the tap repeats a valid input, so every tap can be read.
    count: np.ndarray
    taps: np.ndarray
    weights: np.ndarray
    # Outputs [regular_start, regular_stop) all read inputs regular_offset + step * i + t with the
    # same weights[i] (a strided slice instead of a gather); the others are near an edge.
    step: int
    regular_start: int
    regular_stop: int
    regular_offset: int


@functools.lru_cache(maxsize=64)
def _coefficients(in_size: int, out_size: int, filter_name: str) -> _Coefficients:
    kernel, support = _FILTERS[filter_name]
    # The box is (0, 0, in_size, ...) in float32, exact for any real image size.
    scale = float(in_size) / out_size
    filter_scale = max(scale, 1.0)
    support *= filter_scale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    inv_scale = 1.0 / filter_scale
    # The C casts to int, which truncates towards zero; with the clamp at 0 that is a floor.
    first = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    last = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64)
    count = last - first
    tap = np.arange(ksize)
    used = tap[None, :] < count[:, None]
    weights = kernel((((first[:, None] + tap[None, :]).astype(np.float64) - center[:, None])
                      + 0.5) * inv_scale)
    weights = np.where(used, weights, 0.0)
    # The C adds the weights up one tap after another: np.sum's pairwise sum could round
    # differently.
    total = np.zeros(out_size, dtype=np.float64)
    for t in range(ksize):
        total += weights[:, t]
    nonzero = total != 0.0
    weights[nonzero] /= total[nonzero, None]
    taps = first[:, None] + np.minimum(tap[None, :], np.maximum(count - 1, 0)[:, None])
    step, start, stop, offset = _regular_outputs(in_size, out_size, first, count, weights)
    for array in (count, taps, weights):
        array.flags.writeable = False
    return _Coefficients(count, taps, weights, step, start, stop, offset)


def _regular_outputs(in_size, out_size, first, count, weights) -> Tuple[int, int, int, int]:
    """Find the run of outputs an integer downscale reads with one stride and the same weights."""
    if in_size % out_size or out_size < 3:
        return 1, 0, 0, 0
    step = in_size // out_size
    middle = out_size // 2
    offset = int(first[middle]) - step * middle
    index = np.arange(out_size)
    # Away from the edges the arguments of the kernel are the same doubles for every output
    # ((i + 0.5) * step is exact), so the weights are bit for bit the same.
    regular = ((first == offset + step * index) & (count == count[middle])
               & np.all(weights == weights[middle], axis=1))
    start = middle
    while start > 0 and regular[start - 1]:
        start -= 1
    stop = middle + 1
    while stop < out_size and regular[stop]:
        stop += 1
    return step, start, stop, offset


@functools.lru_cache(maxsize=64)
def _fixed_point(in_size: int, out_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Return the bilinear taps and Pillow's int32 coefficients (normalize_coeffs_8bpc)."""
    coefficients = _coefficients(in_size, out_size, 'bilinear')
    scaled = coefficients.weights * float(1 << _PRECISION_BITS)
    fixed = np.trunc(np.where(coefficients.weights < 0, scaled - 0.5, scaled + 0.5))
    fixed = fixed.astype(np.int32)
    # Taps no output weighs cost a pass over the image for nothing (an enlargement's third tap).
    keep = np.any(fixed != 0, axis=0)
    taps = np.ascontiguousarray(coefficients.taps[:, keep])
    fixed = np.ascontiguousarray(fixed[:, keep])
    taps.flags.writeable = False
    fixed.flags.writeable = False
    return taps, fixed


def _resample_rows_u8(rows: np.ndarray, out_size: int) -> np.ndarray:
    """Resample axis 0 of a uint8 array as Pillow's 8-bit bilinear pass does."""
    taps, fixed = _fixed_point(rows.shape[0], out_size)
    # Exact in int32 (non-negative weights adding up to about 2**22, times at most 255), so adding
    # tap by tap gives Pillow's sums whatever the order.
    shape = (out_size,) + (1,) * (rows.ndim - 1)
    total = np.full((out_size,) + rows.shape[1:], _HALF, dtype=np.int32)
    gathered = np.empty(total.shape, dtype=np.uint8)
    product = np.empty(total.shape, dtype=np.int32)
    for t in range(taps.shape[1]):
        np.take(rows, taps[:, t], axis=0, out=gathered)
        np.multiply(gathered, fixed[:, t].reshape(shape), out=product)
        total += product
    np.right_shift(total, _PRECISION_BITS, out=total)
    return np.clip(total, 0, 255).astype(np.uint8)


def _resize_exact(rgb: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
    """Resize (H, W, 3) uint8 as Pillow's bilinear ImagingResample: horizontal, then vertical."""
    image = rgb
    if out_width != image.shape[1]:
        # Columns as rows: gathering whole rows is far faster than gathering pixels.
        columns = _resample_rows_u8(cv2.transpose(image), out_width)
        image = cv2.transpose(columns)
    if out_height != image.shape[0]:
        image = _resample_rows_u8(image, out_height)
    return image


def _resample_rows_float(rows: np.ndarray, out_size: int) -> np.ndarray:
    """Resample axis 0 of a float32 array as Pillow's bicubic pass for mode F does."""
    coefficients = _coefficients(rows.shape[0], out_size, 'bicubic')
    weights = coefficients.weights
    start, stop = coefficients.regular_start, coefficients.regular_stop
    edges = np.concatenate([np.arange(start), np.arange(stop, out_size)])
    total = np.zeros((out_size,) + rows.shape[1:], dtype=np.float64)
    regular = total[start:stop]
    product = np.empty(regular.shape, dtype=np.float64)
    shape = (len(edges),) + (1,) * (rows.ndim - 1)
    # The C accumulates in double, tap after tap; another order could round to another float32.
    # Each product is float32 times double in double; past an output's count its weight is 0.0
    # and adding the product changes nothing.
    for t in range(weights.shape[1]):
        if stop > start and t < coefficients.count[start]:
            first = coefficients.regular_offset + coefficients.step * start + t
            inputs = rows[first:first + coefficients.step * (stop - start):coefficients.step]
            np.multiply(inputs, weights[start, t], out=product, dtype=np.float64)
            regular += product
        if len(edges):
            total[edges] += rows[coefficients.taps[edges, t]] * weights[edges, t].reshape(shape)
    return total.astype(np.float32)


def _global_view_exact(planes: List[np.ndarray]) -> np.ndarray:
    """Resize three normalised float32 planes to [3, 336, 336] as Pillow's float bicubic does."""
    height, width = planes[0].shape
    if width != CROP_SIDE:
        # [W, 3, H]: the horizontal pass as a pass over rows.
        columns = np.stack([cv2.transpose(plane) for plane in planes], axis=1)
        columns = _resample_rows_float(columns, CROP_SIDE)
        planes = [cv2.transpose(np.ascontiguousarray(columns[:, channel]))
                  for channel in range(3)]
    if height != CROP_SIDE:
        rows = _resample_rows_float(np.stack(planes, axis=1), CROP_SIDE)
        return np.ascontiguousarray(rows.transpose(1, 0, 2))
    return np.stack(planes)


def _pad_white(resized: np.ndarray, grid: CropGrid) -> np.ndarray:
    """Centre the resized image in the white padded one; odd padding leaves the extra line last."""
    if resized.shape[:2] == (grid.padded_height, grid.padded_width):
        return resized
    top = (grid.padded_height - grid.resized_height) // 2
    left = (grid.padded_width - grid.resized_width) // 2
    padded = np.full((grid.padded_height, grid.padded_width, 3), WHITE, dtype=np.uint8)
    padded[top:top + grid.resized_height, left:left + grid.resized_width] = resized
    return padded


def _normalise_crops(channels: List[np.ndarray], grid: CropGrid, out: np.ndarray) -> None:
    """Write the normalised crops of the padded image's channels into out [n, 3, 336, 336]."""
    for row in range(grid.rows):
        for col in range(grid.cols):
            crop = out[row * grid.cols + col]
            y, x = row * CROP_SIDE, col * CROP_SIDE
            for channel, (plane, table) in enumerate(zip(channels, _NORMALISED)):
                # assigned, not dst=: an OpenCV that allocated instead would leave np.empty
                crop[channel] = cv2.LUT(plane[y:y + CROP_SIDE, x:x + CROP_SIDE], table)


def _resize_fast(rgb: np.ndarray, out_height: int, out_width: int) -> np.ndarray:
    """Resize (H, W, 3) uint8 with OpenCV, as close to Pillow's bilinear filter as it gets."""
    height, width = rgb.shape[:2]
    if (out_height, out_width) == (height, width):
        return rgb
    if out_height >= height and out_width >= width:
        # Enlarging, Pillow's filter is plain bilinear interpolation with OpenCV's pixel centres.
        return cv2.resize(rgb, (out_width, out_height), interpolation=cv2.INTER_LINEAR)
    # Shrinking by f, Pillow's triangle is f input pixels either side: a box of f (INTER_AREA)
    # after a Gaussian of the variance it lacks (f**2 / 6 - f**2 / 12) matches it far better than
    # the box alone on detailed content.
    factors = (max(width / out_width, 1.0), max(height / out_height, 1.0))
    sigmas = [factor / math.sqrt(12.0) for factor in factors]
    # A kernel of 1 leaves an axis that is not shrunk alone.
    ksize = tuple(2 * int(math.ceil(3.0 * sigma)) + 1 if factor > 1.0 else 1
                  for factor, sigma in zip(factors, sigmas))
    if ksize != (1, 1):
        rgb = cv2.GaussianBlur(rgb, ksize, sigmaX=sigmas[0], sigmaY=sigmas[1])
    return cv2.resize(rgb, (out_width, out_height), interpolation=cv2.INTER_AREA)


_BAND_BLOCK = 16


@functools.lru_cache(maxsize=64)
def _bicubic_bands(in_size: int) -> Tuple[Tuple[int, int, int, np.ndarray], ...]:
    """
    Cut Pillow's bicubic weights for in_size -> 336 into dense blocks of consecutive outputs.

    Each block (first output, first input, input stop, float32 weights [outputs, inputs]) is one
    small matrix product with the rows it reads: the weights are banded, and a dense 336 x in_size
    product would cost 20 to 50 times more.
    """
    coefficients = _coefficients(in_size, CROP_SIDE, 'bicubic')
    first = coefficients.taps[:, 0]
    stop = first + coefficients.count
    bands = []
    for start in range(0, CROP_SIDE, _BAND_BLOCK):
        outputs = range(start, min(start + _BAND_BLOCK, CROP_SIDE))
        low, high = int(first[outputs.start]), int(stop[outputs.stop - 1])
        weights = np.zeros((len(outputs), high - low), dtype=np.float32)
        for row, output in enumerate(outputs):
            count = int(coefficients.count[output])
            begin = int(first[output]) - low
            weights[row, begin:begin + count] = coefficients.weights[output, :count]
        weights.flags.writeable = False
        bands.append((start, low, high, weights))
    return tuple(bands)


def _resample_rows_banded(rows: np.ndarray) -> np.ndarray:
    """Resample axis 0 of a float32 array to 336 with Pillow's bicubic weights, in float32."""
    flat = rows.reshape(rows.shape[0], -1)
    out = np.empty((CROP_SIDE, flat.shape[1]), dtype=np.float32)
    for start, low, high, weights in _bicubic_bands(rows.shape[0]):
        np.matmul(weights, flat[low:high], out=out[start:start + weights.shape[0]])
    return out.reshape((CROP_SIDE,) + rows.shape[1:])


_MEAN = np.asarray(CLIP_MEAN, dtype=np.float32)
_STD = np.asarray(CLIP_STD, dtype=np.float32)


def _global_view_fast(padded: np.ndarray) -> np.ndarray:
    """
    Resize the padded uint8 image to the normalised global view [3, 336, 336], in float32.

    The processor's weights, but float32 sums in BLAS's order, the vertical pass first (so the
    full-size image needs no transpose), and normalisation last: with weights that add up to 1,
    resampling commutes with the affine normalisation, so this lands within float32 rounding
    (about 1e-6) of resampling the normalised planes.
    """
    view = padded.astype(np.float32)
    if view.shape[0] != CROP_SIDE:
        view = _resample_rows_banded(view)
    if view.shape[1] != CROP_SIDE:
        view = cv2.transpose(_resample_rows_banded(cv2.transpose(view)))
    view = (view / np.float32(255.0) - _MEAN) / _STD
    return np.ascontiguousarray(view.transpose(2, 0, 1))


def prepare_image(rgb: np.ndarray, max_crops: int = MAX_CROPS, exact: bool = False) -> ImageInputs:
    """
    Turn an (H, W, 3) uint8 RGB frame into Phi-3-vision's image inputs within max_crops crops.

    exact=True gives the processor's pixel_values bit for bit (numpy, slower); exact=False resizes
    with OpenCV, within FAST_MAX_ABS_DIFF of them. The frame is never modified. Raises TypeError
    or ValueError for a frame that is not a non-empty (H, W, 3) uint8 array, a budget outside
    1..16, or an aspect ratio the HD transform cannot resize (see crop_grid).
    """
    budget = _check_max_crops(max_crops)
    rgb = _check_rgb(rgb)
    grid = crop_grid(rgb.shape[0], rgb.shape[1], budget)
    if exact:
        resized = _resize_exact(rgb, grid.resized_height, grid.resized_width)
    else:
        resized = _resize_fast(rgb, grid.resized_height, grid.resized_width)
    padded = _pad_white(resized, grid)
    channels = cv2.split(padded)
    pixel_values = np.empty((1 + grid.num_crops, 3, CROP_SIDE, CROP_SIDE), dtype=np.float32)
    _normalise_crops(channels, grid, pixel_values[1:])
    if exact:
        # The processor resizes the normalised float planes, not the uint8 image.
        planes = [cv2.LUT(plane, table) for plane, table in zip(channels, _NORMALISED)]
        pixel_values[0] = _global_view_exact(planes)
    else:
        pixel_values[0] = _global_view_fast(padded)
    return ImageInputs(pixel_values, grid)
