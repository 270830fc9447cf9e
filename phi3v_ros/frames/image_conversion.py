"""
Turn ``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` frames into RGB numpy arrays.

ROS-free: the functions are duck-typed on the message fields, so they accept the real rclpy
messages (whose ``data`` is an ``array.array('B')``) as well as any object with the same
attributes.  Both public converters return an ``(H, W, 3)`` ``uint8`` C-contiguous RGB array that
owns its memory (it never aliases ``msg.data``) or raise
:class:`~phi3v_ros.base.errors.ImageConversionError` with a one-sentence message naming the
problem.
No other exception type escapes, whatever the input.

Raw frames are validated before any pixel is touched: positive width and height,
``width * height <= max_pixels``, ``step >= width * bytes_per_pixel`` and
``len(data) == height * step`` exactly (a frame one byte short or long is refused, never
guessed at).  Row padding (``step`` larger than the pixel row) is skipped with numpy strides on
a zero-copy view of the message buffer; the only full-frame copy is the conversion's output
(plus one intermediate copy for 16-bit colour/Bayer and for byte-swapped or odd-step 16-bit mono).

Compressed frames are recognised by their magic bytes (PNG or JPEG; the ``format`` string is
ignored because publishers get it wrong), and the image size declared in the header (PNG IHDR,
JPEG SOFn) is checked against ``max_pixels`` before decoding, so a tiny file declaring a huge
image (a decompression bomb) is refused without allocating anything.
"""
from __future__ import annotations

import functools
import operator
from typing import Any, Dict, FrozenSet, NamedTuple, Optional, Tuple

import cv2
import numpy as np

from phi3v_ros.base.errors import ImageConversionError
from phi3v_ros.base.text import short_repr

__all__ = [
    'SUPPORTED_ENCODINGS',
    'compressed_to_rgb',
    'image_to_rgb',
    'is_supported',
    'raw_image_size',
]

DEFAULT_MAX_PIXELS = 40_000_000


class _Spec(NamedTuple):
    kind: str              # how to convert, see _convert_raw
    bytes_per_pixel: int   # minimum step is width * bytes_per_pixel (nv12: the Y plane, 1)
    channels: int = 1      # samples per pixel in the buffer
    code: Optional[int] = None   # cv2.cvtColor code applied last (None: already RGB)


_SPECS: Dict[str, _Spec] = {
    # 8 bits per sample
    'rgb8': _Spec('u8', 3, 3, None),
    'bgr8': _Spec('u8', 3, 3, cv2.COLOR_BGR2RGB),
    '8UC3': _Spec('u8', 3, 3, cv2.COLOR_BGR2RGB),
    'rgba8': _Spec('u8', 4, 4, cv2.COLOR_RGBA2RGB),
    'bgra8': _Spec('u8', 4, 4, cv2.COLOR_BGRA2RGB),
    '8UC4': _Spec('u8', 4, 4, cv2.COLOR_BGRA2RGB),
    'mono8': _Spec('u8', 1, 1, cv2.COLOR_GRAY2RGB),
    '8UC1': _Spec('u8', 1, 1, cv2.COLOR_GRAY2RGB),
    # 16 bits per sample
    'mono16': _Spec('mono16', 2, 1, cv2.COLOR_GRAY2RGB),
    '16UC1': _Spec('mono16', 2, 1, cv2.COLOR_GRAY2RGB),
    'rgb16': _Spec('hi16', 6, 3, None),
    'bgr16': _Spec('hi16', 6, 3, cv2.COLOR_BGR2RGB),
    '16UC3': _Spec('hi16', 6, 3, cv2.COLOR_BGR2RGB),
    'rgba16': _Spec('hi16', 8, 4, cv2.COLOR_RGBA2RGB),
    'bgra16': _Spec('hi16', 8, 4, cv2.COLOR_BGRA2RGB),
    '16UC4': _Spec('hi16', 8, 4, cv2.COLOR_BGRA2RGB),
    # YUV 4:2:2 (ROS 'yuv422' is UYVY, 'yuv422_yuy2' is YUYV); BT.601 limited range like cv_bridge
    'yuv422': _Spec('u8', 2, 2, cv2.COLOR_YUV2RGB_UYVY),
    'uyvy': _Spec('u8', 2, 2, cv2.COLOR_YUV2RGB_UYVY),
    'yuv422_yuy2': _Spec('u8', 2, 2, cv2.COLOR_YUV2RGB_YUYV),
    'yuyv': _Spec('u8', 2, 2, cv2.COLOR_YUV2RGB_YUYV),
    # YUV 4:2:0 semi-planar: a Y plane of `height` rows then an interleaved chroma plane of
    # `height / 2` rows, both `step` bytes apart
    'nv12': _Spec('nv', 1, 1, cv2.COLOR_YUV2RGB_NV12),
    'nv21': _Spec('nv', 1, 1, cv2.COLOR_YUV2RGB_NV21),
    # Bayer mosaics.  OpenCV names a pattern after the 2x2 block starting at (1, 1), so the ROS
    # 'rggb' layout is OpenCV's 'BG' and so on.
    'bayer_rggb8': _Spec('u8', 1, 1, cv2.COLOR_BayerBG2RGB),
    'bayer_bggr8': _Spec('u8', 1, 1, cv2.COLOR_BayerRG2RGB),
    'bayer_gbrg8': _Spec('u8', 1, 1, cv2.COLOR_BayerGR2RGB),
    'bayer_grbg8': _Spec('u8', 1, 1, cv2.COLOR_BayerGB2RGB),
    'bayer_rggb16': _Spec('hi16', 2, 1, cv2.COLOR_BayerBG2RGB),
    'bayer_bggr16': _Spec('hi16', 2, 1, cv2.COLOR_BayerRG2RGB),
    'bayer_gbrg16': _Spec('hi16', 2, 1, cv2.COLOR_BayerGR2RGB),
    'bayer_grbg16': _Spec('hi16', 2, 1, cv2.COLOR_BayerGB2RGB),
}

#: The ``sensor_msgs/image_encodings`` names :func:`image_to_rgb` converts (case-sensitive, as
#: in ROS).  Anything else - float depth images, signed types, 2-channel types, unknown names -
#: is refused; see :func:`is_supported`.
SUPPORTED_ENCODINGS: FrozenSet[str] = frozenset(_SPECS)

_EVEN_WIDTH_KINDS = ('yuv422', 'uyvy', 'yuv422_yuy2', 'yuyv', 'nv12', 'nv21')


def is_supported(encoding: Any) -> bool:
    """
    Return True if :func:`image_to_rgb` converts frames with this ``encoding`` string.

    The node can use this to fall back to cv_bridge for other encodings.  Never raises.
    """
    return isinstance(encoding, str) and encoding in _SPECS


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------

def _last_line(exc: BaseException) -> str:
    """Return the informative last line of an exception's text (cv2.error spans several lines)."""
    try:
        lines = str(exc).strip().splitlines()
    except Exception:
        lines = []
    return lines[-1][:200] if lines else 'no details'


def _as_int(value: Any, name: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        raise ImageConversionError(
            'image field %s must be an integer, got %s' % (name, short_repr(value))) from None


def _check_max_pixels(max_pixels: Any) -> int:
    try:
        limit = operator.index(max_pixels)
    except TypeError:
        limit = 0
    if limit <= 0:
        raise ImageConversionError(
            'max_pixels must be a positive integer, got %s' % short_repr(max_pixels))
    return limit


def _byte_view(data: Any, what: str) -> memoryview:
    """Return a flat, zero-copy byte view of a bytes-like ``data`` field."""
    try:
        view = memoryview(data)
    except TypeError:
        raise ImageConversionError(
            '%s data must be bytes-like (bytes, bytearray, array.array or memoryview), got %s'
            % (what, type(data).__name__)) from None
    if not view.c_contiguous:
        raise ImageConversionError('%s data must be a contiguous buffer' % what)
    if view.ndim != 1 or view.format != 'B':
        view = view.cast('B')
    return view


def _guarded(func):
    """Re-raise anything but ImageConversionError as ImageConversionError (cv2.error, ...)."""
    @functools.wraps(func)
    def wrapper(msg, *, max_pixels=DEFAULT_MAX_PIXELS, **kwargs):
        try:
            return func(msg, max_pixels=max_pixels, **kwargs)
        except ImageConversionError:
            raise
        except Exception as exc:  # the contract: callers only ever see ImageConversionError
            raise ImageConversionError('%s failed: %s: %s' % (
                func.__name__, type(exc).__name__, _last_line(exc))) from exc
    return wrapper


def _finish(rgb: np.ndarray, height: int, width: int,
            out: Optional[np.ndarray] = None) -> np.ndarray:
    """
    Check every result one last time (cheap: never copies a well-formed array).

    With out, the result is in out (written there by the conversion itself, or copied once if it
    could not be).
    """
    if rgb.dtype != np.uint8 or rgb.shape != (height, width, 3):
        raise ImageConversionError(
            'conversion produced an array of shape %s and dtype %s instead of (%d, %d, 3) uint8'
            % (rgb.shape, rgb.dtype, height, width))
    if out is not None:
        if rgb.ctypes.data != out.ctypes.data:
            np.copyto(out, rgb)
        return out
    return np.ascontiguousarray(rgb)


def _check_out(out: Optional[np.ndarray], height: int, width: int) -> None:
    if out is not None and (not isinstance(out, np.ndarray) or out.dtype != np.uint8
                            or out.shape != (height, width, 3) or not out.flags.c_contiguous
                            or not out.flags.writeable):
        raise ImageConversionError(
            'out must be a writable C-contiguous (%d, %d, 3) uint8 array' % (height, width))


# --------------------------------------------------------------------------------------------
# raw images
# --------------------------------------------------------------------------------------------

def _refuse_encoding(encoding: Any) -> ImageConversionError:
    if not isinstance(encoding, str):
        return ImageConversionError(
            'image encoding must be a string, got %s' % short_repr(encoding))
    if encoding == '':
        return ImageConversionError('image encoding is empty')
    upper = encoding.upper()
    if upper.startswith(('32F', '64F')):
        return ImageConversionError(
            'floating-point image encoding %r is not supported (publish mono16/16UC1 depth or '
            'a colour image instead)' % encoding)
    for name in _SPECS:   # 'RGB8' or '8uc3': say which spelling would have worked
        if name.lower() == encoding.lower():
            return ImageConversionError(
                'image encoding %r is not supported (encodings are case-sensitive: did you mean '
                '%r?)' % (encoding, name))
    return ImageConversionError(
        'image encoding %s is not supported (supported: %s)'
        % (short_repr(encoding, 60), ', '.join(sorted(_SPECS))))


def _strided(buf: memoryview, shape: Tuple[int, ...], strides: Tuple[int, ...],
             offset: int = 0, dtype: Any = np.uint8) -> np.ndarray:
    """Zero-copy numpy view of ``buf`` (read-only if the buffer is)."""
    return np.ndarray(shape=shape, dtype=dtype, buffer=buf, offset=offset, strides=strides)


def _validate_raw(msg: Any, max_pixels: int) -> Tuple[str, _Spec, int, int, int, memoryview]:
    encoding = msg.encoding
    spec = _SPECS.get(encoding) if isinstance(encoding, str) else None
    if spec is None:
        raise _refuse_encoding(encoding)
    height = _as_int(msg.height, 'height')
    width = _as_int(msg.width, 'width')
    step = _as_int(msg.step, 'step')
    if height <= 0 or width <= 0:
        raise ImageConversionError(
            'image has no pixels: %dx%d (width x height), encoding %r' % (width, height, encoding))
    if width * height > max_pixels:
        raise ImageConversionError(
            'image is too large: %dx%d = %d pixels exceeds max_pixels=%d'
            % (width, height, width * height, max_pixels))
    if encoding in _EVEN_WIDTH_KINDS and width % 2:
        raise ImageConversionError(
            'encoding %r needs an even width, got width %d' % (encoding, width))
    if spec.kind == 'nv' and height % 2:
        raise ImageConversionError(
            'encoding %r needs an even height, got height %d' % (encoding, height))
    min_step = width * spec.bytes_per_pixel
    if step < min_step:
        raise ImageConversionError(
            'image step %d is smaller than width %d x %d bytes per pixel = %d for encoding %r'
            % (step, width, spec.bytes_per_pixel, min_step, encoding))
    rows = height * 3 // 2 if spec.kind == 'nv' else height
    expected = rows * step
    buf = _byte_view(msg.data, 'image')
    if buf.nbytes != expected:
        layout = ('step %d x (height %d x 3/2)' % (step, height) if spec.kind == 'nv'
                  else 'height %d x step %d' % (height, step))
        raise ImageConversionError(
            'image data is %d bytes but %s = %d bytes are expected for encoding %r'
            % (buf.nbytes, layout, expected, encoding))
    return encoding, spec, height, width, step, buf


def _convert_raw(spec: _Spec, height: int, width: int, step: int, big_endian: bool,
                 buf: memoryview, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Return the RGB array; for 8-bit and NV encodings written straight into out when given."""
    kind, ch = spec.kind, spec.channels
    if kind == 'u8':
        shape = (height, width) if ch == 1 else (height, width, ch)
        strides = (step, 1) if ch == 1 else (step, ch, 1)
        view = _strided(buf, shape, strides)
        if spec.code is None:        # rgb8: one copy (numpy skips the row padding)
            if out is not None:
                np.copyto(out, view)
                return out
            return view.copy()
        if out is None:
            return cv2.cvtColor(view, spec.code)
        return cv2.cvtColor(view, spec.code, dst=out)
    if kind == 'nv':
        view = _strided(buf, (height * 3 // 2, width), (step, 1))
        if out is None:
            return cv2.cvtColor(view, spec.code)
        return cv2.cvtColor(view, spec.code, dst=out)
    if kind == 'hi16':
        # The most significant byte of every sample, straight from the bytes: offset 0 for
        # big-endian data, 1 for little-endian, whatever this machine's byte order is.
        high = _strided(buf, (height, width * ch), (step, 2), offset=0 if big_endian else 1)
        high = high.copy()            # C-contiguous, never aliases the message
        if ch > 1:
            high = high.reshape(height, width, ch)
        if spec.code is None:
            return high
        return cv2.cvtColor(high, spec.code)
    if kind == 'mono16':
        dtype = np.dtype('>u2' if big_endian else '<u2')
        depth = _strided(buf, (height, width), (step, 2), dtype=dtype)
        if not dtype.isnative or not depth.flags.aligned:
            depth = depth.astype(np.uint16)   # byte swap / realign: one copy
        low, high, _, _ = cv2.minMaxLoc(depth)
        if high <= low:
            gray = np.zeros((height, width), dtype=np.uint8)
        else:
            scale = 255.0 / (high - low)
            gray = cv2.convertScaleAbs(depth, alpha=scale, beta=-low * scale)
        return cv2.cvtColor(gray, spec.code)
    raise ImageConversionError('internal error: unknown conversion kind %r' % kind)


@_guarded
def raw_image_size(msg: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Tuple[int, int]:
    """
    Return (height, width) of a raw frame that image_to_rgb will accept; touches no pixel.

    :raises ImageConversionError: for every frame image_to_rgb refuses before converting (the
        data length checked against the declared size included).
    """
    _, _, height, width, _, _ = _validate_raw(msg, _check_max_pixels(max_pixels))
    return height, width


@_guarded
def image_to_rgb(msg: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                 out: Optional[np.ndarray] = None) -> np.ndarray:
    """
    Convert a ``sensor_msgs/Image``-like message to an (H, W, 3) uint8 RGB array.

    ``msg`` needs ``encoding``, ``height``, ``width``, ``step``, ``is_bigendian`` and ``data``
    (bytes, bytearray, array.array or memoryview; read through a zero-copy view).

    Conversions (encoding names as in ``sensor_msgs/image_encodings``, case-sensitive):

    * rgb8, bgr8/8UC3, rgba8, bgra8/8UC4, mono8/8UC1: channel reorder / alpha dropped / gray
      replicated, bit-exact.
    * rgb16, bgr16/16UC3, rgba16, bgra16/16UC4: the high byte of every sample (``>> 8``).
    * mono16/16UC1 (usually depth in millimetres): **min-max normalised** over the frame to
      0..255 (the frame's smallest value, 0 for invalid depth pixels included, becomes 0 and
      its largest becomes 255; a constant frame gives all zeros).  The scale therefore changes
      from frame to frame: the result is meant for looking at, not for measuring.
    * yuv422/uyvy (UYVY byte order), yuv422_yuy2/yuyv (YUYV), nv12, nv21: BT.601 limited range,
      as OpenCV and cv_bridge do it.  4:2:2 needs an even width; nv12/nv21 need even width and
      height and ``data`` of ``step * height * 3 / 2`` bytes.
    * bayer_{rggb,bggr,gbrg,grbg}8 (and the 16-bit variants, high byte first): OpenCV bilinear
      demosaicing.

    16-bit data honours ``is_bigendian``.  ``data`` must be exactly ``height * step`` bytes.

    Returns a new C-contiguous array that never shares memory with ``msg.data``; or, when ``out``
    (a writable C-contiguous ``(height, width, 3)`` uint8 array, e.g. a view of shared memory) is
    given, writes the result into ``out`` and returns it (8-bit and NV encodings convert straight
    into it, the others are copied into it once).

    :raises ImageConversionError: unsupported/float/empty encoding, zero or too many pixels
        (``width * height > max_pixels``), ``step`` too small, wrong data length, odd size for
        YUV encodings, or any failure during conversion.
    """
    limit = _check_max_pixels(max_pixels)
    _, spec, height, width, step, buf = _validate_raw(msg, limit)
    _check_out(out, height, width)
    rgb = _convert_raw(spec, height, width, step, bool(msg.is_bigendian), buf, out)
    return _finish(rgb, height, width, out)


# --------------------------------------------------------------------------------------------
# compressed images
# --------------------------------------------------------------------------------------------

_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
_JPEG_MAGIC = b'\xff\xd8\xff'
# JPEG start-of-frame markers: SOF0-3, 5-7, 9-11, 13-15 (0xC4 DHT, 0xC8 JPG, 0xCC DAC are not)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# a normal progressive JPEG has about 10 scans; libjpeg decodes every scan over the whole image
_JPEG_MAX_SCANS = 100
# markers without a length field: TEM, RSTn, SOI, EOI
_JPEG_STANDALONE = frozenset([0x01]) | frozenset(range(0xD0, 0xDA))

if hasattr(cv2, 'IMREAD_COLOR_RGB'):    # OpenCV >= 4.11 decodes straight to RGB
    _IMREAD_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
    _DECODED_TO_RGB: Optional[int] = None
else:
    _IMREAD_FLAGS = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    _DECODED_TO_RGB = cv2.COLOR_BGR2RGB


def _sniff(head: bytes) -> str:
    """Name what the first bytes of a refused compressed frame look like."""
    if not head:
        return 'the data is empty'
    known = [
        (b'BM', 'BMP'), (b'GIF87a', 'GIF'), (b'GIF89a', 'GIF'), (b'II*\x00', 'TIFF'),
        (b'MM\x00*', 'TIFF'), (b'\x00\x00\x00\x0cjP  ', 'JPEG 2000'),
        (b'\xff\x4f\xff\x51', 'JPEG 2000'),
        (b'P1', 'PNM'), (b'P2', 'PNM'), (b'P3', 'PNM'), (b'P4', 'PNM'), (b'P5', 'PNM'),
        (b'P6', 'PNM'), (b'\x76\x2f\x31\x01', 'OpenEXR'), (b'#?RADIANCE', 'Radiance HDR'),
        (b'qoif', 'QOI'),
    ]
    if head[:4] == b'RIFF' and head[8:12] == b'WEBP':
        return 'the data is WebP'
    if head[4:8] == b'ftyp':
        return 'the data is HEIF/AVIF'
    for magic, name in known:
        if head.startswith(magic):
            return 'the data is %s' % name
    if head.startswith(b'\x89PNG') or head.startswith(b'\xff\xd8'):
        return 'the data is a truncated PNG/JPEG signature'
    return 'the data starts with %s' % short_repr(bytes(head[:8]), 60)


def _png_size(buf: memoryview) -> Tuple[int, int]:
    """(width, height) from the IHDR chunk, which the PNG spec puts first."""
    if buf.nbytes < 24:
        raise ImageConversionError(
            'PNG data is truncated before its IHDR header (%d bytes)' % buf.nbytes)
    if bytes(buf[12:16]) != b'IHDR':
        raise ImageConversionError('PNG data does not start with an IHDR chunk')
    width = int.from_bytes(buf[16:20], 'big')
    height = int.from_bytes(buf[20:24], 'big')
    return width, height


def _png_check_chunks(buf: memoryview) -> None:
    """
    Refuse a PNG whose chunk lengths run past the end of the data.

    OpenCV (4.14 at least) allocates whatever a chunk header declares before reading it, so a
    161-byte PNG whose IDAT length field was corrupted to ~2 GB costs 2 GB of memory and seconds
    of CPU.  Walking the chunk headers is bounded (at most one step per 12 bytes) and cheap.
    """
    size = buf.nbytes
    pos = 8
    while pos < size:
        if pos + 12 > size:
            raise ImageConversionError(
                'PNG data is truncated inside a chunk header at byte %d of %d' % (pos, size))
        length = int.from_bytes(buf[pos:pos + 4], 'big')
        kind = bytes(buf[pos + 4:pos + 8])
        if length > 0x7FFFFFFF or pos + 12 + length > size:
            raise ImageConversionError(
                'PNG data is truncated or corrupt: chunk %s at byte %d declares %d bytes but only '
                '%d remain' % (short_repr(kind), pos, length, size - pos - 12))
        if kind == b'IEND':
            return
        pos += 12 + length


def _jpeg_check_scans(data: bytes) -> None:
    """
    Refuse JPEGs with absurdly many scans.

    libjpeg decodes each progressive scan over the whole image, so a small file with thousands of
    scans takes very long.  In entropy-coded data 0xFF is always followed by 0x00 or RSTn, so
    counting 0xFFDA counts SOS markers (an EXIF thumbnail may add one or two).
    """
    scans = data.count(b'\xff\xda')
    if scans > _JPEG_MAX_SCANS:
        raise ImageConversionError(
            'JPEG data has %d scans (SOS markers), more than the %d accepted'
            % (scans, _JPEG_MAX_SCANS))


def _jpeg_size(data: bytes) -> Tuple[int, int]:
    """
    Return (width, height) from the first SOFn segment.

    Bounded by the data length, never reads past it.  Skips stray bytes between segments the way
    libjpeg does.
    """
    size = len(data)
    pos = 2                                   # after SOI
    while True:
        # find the next marker: skip anything up to 0xFF, then fill bytes 0xFF
        while True:
            ff = data.find(b'\xff', pos)
            if ff < 0:
                raise ImageConversionError(
                    'JPEG data is truncated or corrupt: no frame header (SOF) found')
            pos = ff
            while pos < size and data[pos] == 0xFF:
                pos += 1
            if pos >= size:
                raise ImageConversionError(
                    'JPEG data is truncated or corrupt: no frame header (SOF) found')
            marker = data[pos]
            pos += 1
            if marker != 0x00:                # 0xFF00 is stuffed data, not a marker
                break
        if marker in _JPEG_STANDALONE:
            if marker == 0xD9:
                raise ImageConversionError('JPEG data ends (EOI) before any frame header (SOF)')
            continue
        if pos + 2 > size:
            raise ImageConversionError(
                'JPEG data is truncated inside the segment of marker 0xFF%02X' % marker)
        length = (data[pos] << 8) | data[pos + 1]
        if length < 2:
            raise ImageConversionError(
                'JPEG data is corrupt: segment of marker 0xFF%02X has length %d'
                % (marker, length))
        if marker in _JPEG_SOF:
            if length < 8 or pos + 7 > size:
                raise ImageConversionError('JPEG data is truncated inside its frame header (SOF)')
            height = (data[pos + 3] << 8) | data[pos + 4]
            width = (data[pos + 5] << 8) | data[pos + 6]
            return width, height
        if marker == 0xDA:
            raise ImageConversionError('JPEG data has scan data (SOS) before any frame header')
        pos += length


@_guarded
def compressed_to_rgb(msg: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """
    Decode a ``sensor_msgs/CompressedImage``-like message to an (H, W, 3) uint8 RGB array.

    Only PNG and JPEG are accepted, recognised by their magic bytes; ``msg.format`` is read only
    for error messages (it is often wrong, e.g. 'rgb8; jpeg compressed bgr8' for a JPEG whose
    decoded channel order is fixed by the codec anyway).  compressedDepth frames (a 12-byte
    header before the PNG) and every other format are refused.

    The image size declared in the PNG IHDR / JPEG SOF header is checked against
    ``max_pixels`` before decoding.  Grayscale, 16-bit and alpha images come out as 8-bit RGB
    (alpha dropped, 16-bit reduced by OpenCV's IMREAD_COLOR); EXIF orientation is ignored so
    the result has the header's size.  A truncated or corrupt body either raises
    ImageConversionError or decodes to whatever the codec recovered (OpenCV 4.14 refuses
    truncated JPEGs; older versions return them with the missing rows gray).  PNGs whose chunk
    lengths overrun the data and JPEGs with more than 100 scans are refused before decoding
    (both make OpenCV spend memory or CPU out of proportion to the file size).

    :raises ImageConversionError: empty/unknown data, truncated header, zero or too many pixels,
        or a decode failure.
    """
    limit = _check_max_pixels(max_pixels)
    buf = _byte_view(msg.data, 'compressed image')
    head = bytes(buf[:16])
    jpeg: Optional[bytes] = None
    if head.startswith(_PNG_MAGIC):
        codec = 'PNG'
        width, height = _png_size(buf)
    elif head.startswith(_JPEG_MAGIC):
        codec = 'JPEG'
        # bytes for the fast find/count; a bytes message is used as is, anything else copied
        # once (the compressed size, small next to the decoded image)
        jpeg = buf.obj if type(buf.obj) is bytes and len(buf.obj) == buf.nbytes else bytes(buf)
        width, height = _jpeg_size(jpeg)
    else:
        fmt = getattr(msg, 'format', '')
        hint = ''
        if isinstance(fmt, str) and 'compresseddepth' in fmt.lower():
            hint = ' (compressedDepth frames are not supported)'
        raise ImageConversionError(
            'compressed image (format %s) is neither PNG nor JPEG: %s%s'
            % (short_repr(fmt, 60), _sniff(head), hint))
    if width <= 0 or height <= 0:
        raise ImageConversionError(
            '%s header declares an image with no pixels: %dx%d' % (codec, width, height))
    if width * height > limit:
        raise ImageConversionError(
            '%s header declares %dx%d = %d pixels, more than max_pixels=%d'
            % (codec, width, height, width * height, limit))
    if jpeg is None:
        _png_check_chunks(buf)
    else:
        _jpeg_check_scans(jpeg)
    encoded = np.frombuffer(buf, dtype=np.uint8)
    try:
        decoded = cv2.imdecode(encoded, _IMREAD_FLAGS)
    except cv2.error as exc:
        raise ImageConversionError(
            'OpenCV could not decode the %s data (%d bytes): %s'
            % (codec, buf.nbytes, _last_line(exc))) from exc
    if decoded is None:
        raise ImageConversionError(
            'OpenCV could not decode the %s data (%d bytes, declared %dx%d): it is truncated or '
            'corrupt' % (codec, buf.nbytes, width, height))
    if decoded.ndim != 3 or decoded.shape[2] != 3 or decoded.dtype != np.uint8:
        raise ImageConversionError(
            'OpenCV decoded the %s data to an unexpected array of shape %s and dtype %s'
            % (codec, decoded.shape, decoded.dtype))
    if decoded.shape[:2] != (height, width):
        raise ImageConversionError(
            '%s decoded to %dx%d but its header declares %dx%d'
            % (codec, decoded.shape[1], decoded.shape[0], width, height))
    if _DECODED_TO_RGB is not None:
        decoded = cv2.cvtColor(decoded, _DECODED_TO_RGB)
    return _finish(decoded, height, width)
