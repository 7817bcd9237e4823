"""Images: ``sensor_msgs/Image`` and ``CompressedImage`` <-> NumPy arrays, without cv_bridge.

Images are read from the message fields (``encoding``, ``step`` row padding, ``is_bigendian``),
so ``rosbags`` messages work too. :func:`image_to_array` returns the raw pixel values
(``(H, W)`` or ``(H, W, C)``, native byte order, an owned C-contiguous copy);
:func:`image_to_rgb` and :func:`compressed_to_rgb` return ``(H, W, 3) uint8`` RGB, the networks'
input. Every malformed message raises :class:`~epropnp_ros.errors.ImageConversionError`; an
image over a pixel budget (``max_pixels``) raises its subclass
:class:`~epropnp_ros.errors.ImageTooLargeError` before any pixel is copied or decoded (a
compressed image is judged by the size its JPEG / PNG header declares: :func:`compressed_size`).
"""

from __future__ import annotations

import array
import re
import struct
import sys
from typing import Any

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from epropnp_ros.errors import ImageConversionError, ImageTooLargeError
from epropnp_ros.messages import copy_header

__all__ = [
    "SUPPORTED_ENCODINGS",
    "array_to_image",
    "check_image_size",
    "compressed_size",
    "compressed_to_rgb",
    "image_to_array",
    "image_to_rgb",
    "rgb_to_compressed",
]

_U8, _U16 = np.dtype(np.uint8), np.dtype(np.uint16)

#: Named encodings of ``sensor_msgs/image_encodings.hpp``: (dtype, channels).
_NAMED_ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (_U8, 3), "bgr8": (_U8, 3), "rgba8": (_U8, 4), "bgra8": (_U8, 4),
    "rgb16": (_U16, 3), "bgr16": (_U16, 3), "rgba16": (_U16, 4), "bgra16": (_U16, 4),
    "mono8": (_U8, 1), "mono16": (_U16, 1),
    "bayer_rggb8": (_U8, 1), "bayer_bggr8": (_U8, 1),
    "bayer_gbrg8": (_U8, 1), "bayer_grbg8": (_U8, 1),
    "bayer_rggb16": (_U16, 1), "bayer_bggr16": (_U16, 1),
    "bayer_gbrg16": (_U16, 1), "bayer_grbg16": (_U16, 1),
    "yuv422": (_U8, 2), "uyvy": (_U8, 2), "yuv422_yuy2": (_U8, 2), "yuyv": (_U8, 2),
}
_NUMERIC_ENCODING = re.compile(r"^(8|16|32|64)([USF])C([1-4])$")
_NUMERIC_DTYPES = {
    ("8", "U"): np.uint8, ("8", "S"): np.int8, ("16", "U"): np.uint16, ("16", "S"): np.int16,
    ("32", "S"): np.int32, ("32", "F"): np.float32, ("64", "F"): np.float64,
}
#: Every encoding :func:`image_to_array` reads (the numeric ``{8,16,32,64}{U,S,F}C{1..4}``
#: family is listed for its valid depth/type pairs).
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_NAMED_ENCODINGS) + tuple(
    f"{bits}{kind}C{c}" for (bits, kind) in _NUMERIC_DTYPES for c in range(1, 5)
)

# OpenCV demosaicing codes (OpenCV names Bayer patterns by the second row's first two pixels).
_BAYER_TO_RGB = {
    "rggb": cv2.COLOR_BayerBG2RGB, "bggr": cv2.COLOR_BayerRG2RGB,
    "gbrg": cv2.COLOR_BayerGR2RGB, "grbg": cv2.COLOR_BayerGB2RGB,
}


# OpenCV conversions of the other colour layouts to RGB (keys: encoding without bit depth).
_TO_RGB = {"bgr": cv2.COLOR_BGR2RGB, "rgba": cv2.COLOR_RGBA2RGB, "bgra": cv2.COLOR_BGRA2RGB,
           "mono": cv2.COLOR_GRAY2RGB}


def _encoding_format(encoding: str) -> tuple[np.dtype, int]:
    """(dtype, channels) of an encoding, or :class:`ImageConversionError`."""
    named = _NAMED_ENCODINGS.get(encoding.lower())
    if named is not None:
        return named
    match = _NUMERIC_ENCODING.match(encoding.upper())
    if match is not None:
        dtype = _NUMERIC_DTYPES.get((match.group(1), match.group(2)))
        if dtype is not None:
            return np.dtype(dtype), int(match.group(3))
    raise ImageConversionError(
        f"unsupported image encoding {encoding!r}; supported: rgb8, bgr8, rgba8, bgra8, rgb16, "
        "bgr16, rgba16, bgra16, mono8, mono16, bayer_*8/16, yuv422 (uyvy), yuv422_yuy2 (yuyv), "
        "and {8U,8S,16U,16S,32S,32F,64F}C{1..4}"
    )


def _buffer(data: Any) -> np.ndarray:
    """The bytes of a message ``data`` field (array.array, bytes, ndarray, list) as uint8."""
    try:
        return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def image_to_array(msg: Any) -> np.ndarray:
    """Pixel values of a ``sensor_msgs/Image``.

    Honours ``encoding`` (see :data:`SUPPORTED_ENCODINGS`), ``step`` (row padding is dropped)
    and ``is_bigendian`` (multi-byte values are returned in native byte order).

    Args:
        msg: a ``sensor_msgs/Image`` (or any object with its fields).

    Returns:
        ``(H, W)`` for one-channel encodings, else ``(H, W, C)``, dtype of the encoding
        (``uint16`` for ``16UC1``/``mono16``, ``float32`` for ``32FC1`` ...); an owned,
        C-contiguous copy (it does not alias the message).

    Raises:
        ImageConversionError: unsupported encoding, zero-size image, ``step`` smaller than a
            row, or ``data`` shorter than ``step * height``.
    """
    encoding = str(msg.encoding)
    dtype, channels = _encoding_format(encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"zero-size image ({width}x{height}, encoding {encoding})")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than one row ({width} px x {channels} ch x "
            f"{dtype.itemsize} B = {row_bytes} B, encoding {encoding})"
        )
    buf = _buffer(msg.data)
    if buf.size < step * height:
        raise ImageConversionError(
            f"truncated image data: {buf.size} B < step {step} x height {height} = "
            f"{step * height} B (encoding {encoding})"
        )
    rows = buf[: step * height].reshape(height, step)[:, :row_bytes]
    wire = dtype.newbyteorder(">" if msg.is_bigendian else "<") if dtype.itemsize > 1 else dtype
    pixels = np.ascontiguousarray(rows).view(wire).astype(dtype.newbyteorder("="), copy=True)
    shape = (height, width) if channels == 1 else (height, width, channels)
    return pixels.reshape(shape)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """16-bit values scaled to 8 bit (``round(v * 255 / 65535)``); 8-bit unchanged."""
    if x.dtype == np.uint8:
        return x
    return ((x.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _check_pixels(width: int, height: int, max_pixels: int | None, what: str) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"{what} of {width}x{height} = {width * height} px is over the limit of "
            f"{max_pixels} px (parameter max_image_pixels)"
        )


def image_to_rgb(msg: Any, max_pixels: int | None = None) -> np.ndarray:
    """A ``sensor_msgs/Image`` as ``(H, W, 3) uint8`` RGB, the networks' input.

    Colour encodings are reordered (bgr -> rgb, alpha dropped), mono is replicated to three
    channels, Bayer is demosaiced and YUV 4:2:2 converted with OpenCV, 16-bit colour/mono is
    scaled to 8 bit (``v * 255 / 65535``).

    Raises:
        ImageConversionError: everything :func:`image_to_array` raises, and encodings that are
            not images of colour or intensity: depth / numeric ones (``16UC1``, ``32FC1``,
            ``8UC3`` -- no channel order is defined, as in cv_bridge).
        ImageTooLargeError: ``width * height > max_pixels`` (checked first).
    """
    _check_pixels(int(msg.width), int(msg.height), max_pixels, "image")
    encoding = str(msg.encoding).lower()
    if encoding not in _NAMED_ENCODINGS:
        _encoding_format(str(msg.encoding))  # unsupported encodings get the generic message
        raise ImageConversionError(
            f"encoding {msg.encoding!r} is a numeric/depth format without a colour meaning; "
            "publish rgb8, bgr8, mono8 (or another colour encoding) for the detector"
        )
    pixels = image_to_array(msg)
    if encoding.startswith("bayer_"):
        rgb = cv2.cvtColor(pixels, _BAYER_TO_RGB[encoding[6:10]])
        return np.ascontiguousarray(_to_uint8(rgb))
    if encoding in ("yuv422", "uyvy"):
        return cv2.cvtColor(pixels, cv2.COLOR_YUV2RGB_UYVY)
    if encoding in ("yuv422_yuy2", "yuyv"):
        return cv2.cvtColor(pixels, cv2.COLOR_YUV2RGB_YUY2)
    pixels = _to_uint8(pixels)
    if encoding in ("rgb8", "rgb16"):
        return pixels
    return cv2.cvtColor(pixels, _TO_RGB[encoding[:-2] if encoding.endswith("16") else
                                         encoding[:-1]])


def array_to_image(arr: np.ndarray, encoding: str, header: Any | None = None) -> Image:
    """A ``sensor_msgs/Image`` holding ``arr`` (no row padding, native byte order).

    Args:
        arr: ``(H, W)`` or ``(H, W, C)`` with the dtype and channel count of ``encoding``
            (e.g. ``(H, W, 3) uint8`` for ``rgb8``, ``(H, W) uint16`` for ``16UC1``).
        encoding: a name from :data:`SUPPORTED_ENCODINGS`.
        header: copied into the message (frame id and stamp); default an empty header.

    Raises:
        ImageConversionError: unsupported encoding, zero size, or dtype/channels that do not
            match the encoding.
    """
    dtype, channels = _encoding_format(encoding)
    arr = np.asarray(arr)
    got_channels = 1 if arr.ndim == 2 else (arr.shape[2] if arr.ndim == 3 else -1)
    if got_channels != channels or arr.dtype != dtype:
        raise ImageConversionError(
            f"array {arr.dtype} {tuple(arr.shape)} does not match encoding {encoding!r} "
            f"({dtype} with {channels} channel(s))"
        )
    height, width = arr.shape[:2]
    if height == 0 or width == 0:
        raise ImageConversionError(f"zero-size image ({width}x{height})")
    data = array.array("B")
    data.frombytes(np.ascontiguousarray(arr).tobytes())
    return Image(
        header=copy_header(header) if header is not None else Header(),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=int(sys.byteorder == "big"),
        step=width * channels * dtype.itemsize,
        data=data,
    )


#: Bytes of a compressed image searched for its size (JPEG metadata segments come first; EXIF
#: thumbnails and ICC profiles stay well below this).
_HEADER_SCAN_BYTES = 1 << 20
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: JPEG start-of-frame markers (they carry the image size): C0-CF but DHT, JPG, DAC.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: JPEG markers without a length field: TEM, RST0-7, SOI.
_JPEG_STANDALONE = frozenset((0x01, *range(0xD0, 0xD8), 0xD8))


def compressed_size(data: bytes | np.ndarray) -> tuple[int, int]:
    """``(width, height)`` declared by the header of JPEG or PNG bytes, without decoding.

    Raises:
        ImageConversionError: neither a PNG signature nor a JPEG start-of-image, or a header
            that ends before it declares the size.
    """
    view = memoryview(bytes(np.frombuffer(data, dtype=np.uint8)[:_HEADER_SCAN_BYTES]))
    head = bytes(view[:8])
    if head == _PNG_SIGNATURE:
        ihdr = bytes(view[8:24])
        if len(ihdr) < 16 or ihdr[4:8] != b"IHDR":
            raise ImageConversionError("PNG without its IHDR header")
        width, height = struct.unpack(">II", ihdr[8:16])
        return int(width), int(height)
    if head[:2] != b"\xff\xd8":
        raise ImageConversionError(
            "compressed data is neither JPEG nor PNG (no start-of-image / PNG signature)"
        )
    pos, end = 2, len(view)
    while pos + 4 <= end:
        if view[pos] != 0xFF:
            raise ImageConversionError(f"JPEG header broken at byte {pos} (no marker)")
        marker = view[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        length = (view[pos + 2] << 8) | view[pos + 3]
        if marker in _JPEG_SOF:
            if pos + 9 > end:
                break
            height = (view[pos + 5] << 8) | view[pos + 6]
            width = (view[pos + 7] << 8) | view[pos + 8]
            return int(width), int(height)
        if marker == 0xDA or length < 2:  # scan data before any frame header
            break
        pos += 2 + length
    raise ImageConversionError("JPEG header declares no frame size (no SOF marker)")


def check_image_size(msg: Any, max_pixels: int) -> None:
    """Refuse an ``Image`` or ``CompressedImage`` over ``max_pixels`` without decoding it (a
    compressed one by its header).

    Raises:
        ImageTooLargeError: the image is over the limit.
        ImageConversionError: a compressed image whose header cannot be read.
    """
    if isinstance(msg, CompressedImage):
        width, height = compressed_size(_buffer(msg.data))
        _check_pixels(width, height, max_pixels, f"compressed image (format {msg.format!r})")
    else:
        _check_pixels(int(msg.width), int(msg.height), max_pixels, "image")


def compressed_to_rgb(msg: Any, max_pixels: int | None = None) -> np.ndarray:
    """A ``sensor_msgs/CompressedImage`` (JPEG or PNG) as ``(H, W, 3) uint8`` RGB.

    Raises:
        ImageConversionError: empty data, ``compressedDepth`` payloads, data that is neither
            JPEG nor PNG, or bytes OpenCV cannot decode (the format string is named in the
            message).
        ImageTooLargeError: the header declares more than ``max_pixels`` pixels (checked before
            decoding).
    """
    fmt = str(msg.format)
    if "compresseddepth" in fmt.lower():
        raise ImageConversionError(f"format {fmt!r} is a depth image, not a colour image")
    buf = _buffer(msg.data)
    if buf.size == 0:
        raise ImageConversionError(f"empty compressed image (format {fmt!r})")
    width, height = compressed_size(buf)
    _check_pixels(width, height, max_pixels, f"compressed image (format {fmt!r})")
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ImageConversionError(
            f"could not decode {buf.size} B of compressed image data (format {fmt!r})"
        )
    return np.ascontiguousarray(bgr[:, :, ::-1])


def rgb_to_compressed(
    rgb: np.ndarray, header: Any | None = None, *, fmt: str = "jpeg", quality: int = 90
) -> CompressedImage:
    """Encode ``rgb: (H, W, 3) uint8`` as a ``CompressedImage`` (``fmt`` "jpeg" or "png").

    The format string follows image_transport: ``"rgb8; jpeg compressed bgr8"``.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or rgb.size == 0:
        raise ImageConversionError(f"expected (H, W, 3) uint8 RGB, got {rgb.dtype} {rgb.shape}")
    if fmt not in ("jpeg", "png"):
        raise ImageConversionError(f"fmt must be 'jpeg' or 'png', got {fmt!r}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    ok, encoded = cv2.imencode("." + ("jpg" if fmt == "jpeg" else "png"),
                               np.ascontiguousarray(rgb[:, :, ::-1]), params)
    if not ok:
        raise ImageConversionError(f"OpenCV could not encode the image as {fmt}")
    data = array.array("B")
    data.frombytes(encoded.tobytes())
    return CompressedImage(
        header=copy_header(header) if header is not None else Header(),
        format=f"rgb8; {fmt} compressed bgr8",
        data=data,
    )
