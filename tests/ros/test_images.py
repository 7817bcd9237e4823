"""epropnp_ros.images against real message classes: every encoding, row padding, byte order,
compression, and the errors of malformed images."""

from __future__ import annotations

import array
import struct

import numpy as np
import pytest
import torch
from sensor_msgs.msg import CompressedImage, Image

from epropnp_ros.errors import ImageConversionError, ImageTooLargeError
from epropnp_ros.images import (
    array_to_image,
    check_image_size,
    compressed_size,
    compressed_to_rgb,
    image_to_array,
    image_to_rgb,
    rgb_to_compressed,
)
from epropnp_ros.messages import make_header

pytestmark = pytest.mark.ros


def _raw_image(encoding: str, h: int, w: int, step: int, data: bytes, bigendian: int = 0
               ) -> Image:
    return Image(height=h, width=w, encoding=encoding, step=step, is_bigendian=bigendian,
                 data=array.array("B", data))


def test_rgb8_round_trip_and_rgb() -> None:
    gen = torch.Generator().manual_seed(3)
    rgb = torch.randint(0, 256, (5, 7, 3), generator=gen, dtype=torch.uint8).numpy()
    msg = array_to_image(rgb, "rgb8", make_header("cam", 1_500_000_001))
    assert (msg.height, msg.width, msg.step, msg.encoding) == (5, 7, 21, "rgb8")
    assert msg.header.frame_id == "cam"
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1, 500_000_001)
    np.testing.assert_array_equal(image_to_array(msg), rgb)
    out = image_to_rgb(msg)
    np.testing.assert_array_equal(out, rgb)
    assert out.flags.c_contiguous and out.dtype == np.uint8


def test_bgr8_is_reordered() -> None:
    bgr = np.zeros((2, 3, 3), np.uint8)
    bgr[0, 0] = (10, 20, 30)  # b, g, r
    rgb = image_to_rgb(array_to_image(bgr, "bgr8"))
    assert rgb[0, 0].tolist() == [30, 20, 10]
    bgra = np.zeros((2, 3, 4), np.uint8)
    bgra[1, 2] = (1, 2, 3, 255)
    assert image_to_rgb(array_to_image(bgra, "bgra8"))[1, 2].tolist() == [3, 2, 1]
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[1, 2] = (1, 2, 3, 255)
    assert image_to_rgb(array_to_image(rgba, "rgba8"))[1, 2].tolist() == [1, 2, 3]


def test_mono8_replicated_and_mono16_scaled() -> None:
    mono = np.arange(12, dtype=np.uint8).reshape(3, 4)
    msg = array_to_image(mono, "mono8")
    assert image_to_array(msg).shape == (3, 4)
    rgb = image_to_rgb(msg)
    assert rgb.shape == (3, 4, 3)
    for ch in range(3):
        np.testing.assert_array_equal(rgb[:, :, ch], mono)
    mono16 = np.array([[0, 257, 65535]], np.uint16)
    assert image_to_rgb(array_to_image(mono16, "mono16"))[0, :, 0].tolist() == [0, 1, 255]


def test_16uc1_keeps_values_above_255() -> None:
    depth = np.array([[0, 256, 1000], [4095, 65535, 300]], np.uint16)
    out = image_to_array(array_to_image(depth, "16UC1"))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, depth)
    with pytest.raises(ImageConversionError, match="numeric/depth"):
        image_to_rgb(array_to_image(depth, "16UC1"))


def test_row_padding_via_step() -> None:
    h, w, pad = 3, 4, 5
    rgb = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)
    rows = [row.tobytes() + b"\xab" * pad for row in rgb]
    msg = _raw_image("rgb8", h, w, w * 3 + pad, b"".join(rows))
    np.testing.assert_array_equal(image_to_array(msg), rgb)
    depth = np.array([[1, 300], [70, 65000]], np.uint16)
    rows16 = [r.astype("<u2").tobytes() + b"\x00\x00\x00" for r in depth]
    np.testing.assert_array_equal(image_to_array(_raw_image("16UC1", 2, 2, 7, b"".join(rows16))),
                                  depth)


def test_big_endian_flag() -> None:
    depth = np.array([[1, 258, 65280]], np.uint16)
    big = _raw_image("16UC1", 1, 3, 6, depth.astype(">u2").tobytes(), bigendian=1)
    np.testing.assert_array_equal(image_to_array(big), depth)
    assert image_to_array(big).dtype.isnative
    little = _raw_image("16UC1", 1, 3, 6, depth.astype("<u2").tobytes(), bigendian=0)
    np.testing.assert_array_equal(image_to_array(little), depth)
    # The same bytes read with the wrong flag are byte-swapped: the flag is honoured.
    wrong = _raw_image("16UC1", 1, 3, 6, depth.astype("<u2").tobytes(), bigendian=1)
    assert image_to_array(wrong).tolist() == [[256, 513, 255]]
    f = np.array([[1.5, -2.25]], np.float32)
    big_f = _raw_image("32FC1", 1, 2, 8, f.astype(">f4").tobytes(), bigendian=1)
    np.testing.assert_array_equal(image_to_array(big_f), f)


def test_8uc3_array_but_no_colour_meaning() -> None:
    arr = np.full((2, 2, 3), 7, np.uint8)
    msg = array_to_image(arr, "8UC3")
    np.testing.assert_array_equal(image_to_array(msg), arr)
    with pytest.raises(ImageConversionError, match="8UC3"):
        image_to_rgb(msg)


def test_bayer_and_yuv_to_rgb() -> None:
    colour = np.array([200, 100, 40], np.uint8)
    h, w = 8, 8
    mosaic = np.empty((h, w), np.uint8)  # RGGB: R at (even, even), B at (odd, odd)
    mosaic[0::2, 0::2] = colour[0]
    mosaic[0::2, 1::2] = colour[1]
    mosaic[1::2, 0::2] = colour[1]
    mosaic[1::2, 1::2] = colour[2]
    rgb = image_to_rgb(array_to_image(mosaic, "bayer_rggb8"))
    np.testing.assert_array_equal(rgb[2:-2, 2:-2], np.broadcast_to(colour, (h - 4, w - 4, 3)))
    uyvy = np.full((2, 4, 2), 128, np.uint8)  # Y = U = V = 128: mid grey
    rgb = image_to_rgb(array_to_image(uyvy, "yuv422"))
    assert rgb.shape == (2, 4, 3) and np.all(np.abs(rgb.astype(int) - 128) <= 2)


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        (_raw_image("nv12", 2, 2, 2, b"\0" * 6), "unsupported image encoding 'nv12'"),
        (_raw_image("rgb8", 0, 4, 12, b""), "zero-size"),
        (_raw_image("rgb8", 4, 0, 0, b""), "zero-size"),
        (_raw_image("rgb8", 2, 2, 6, b"\0" * 11), "truncated"),
        (_raw_image("16UC1", 2, 2, 3, b"\0" * 6), "step 3 is smaller than one row"),
    ],
)
def test_image_errors(msg: Image, match: str) -> None:
    with pytest.raises(ImageConversionError, match=match):
        image_to_array(msg)
    with pytest.raises(ImageConversionError):
        image_to_rgb(msg)


def test_array_to_image_rejects_mismatch() -> None:
    with pytest.raises(ImageConversionError, match="does not match"):
        array_to_image(np.zeros((2, 2, 3), np.uint16), "rgb8")
    with pytest.raises(ImageConversionError, match="does not match"):
        array_to_image(np.zeros((2, 2), np.uint8), "rgb8")


def test_compressed_png_jpeg_and_errors() -> None:
    gen = torch.Generator().manual_seed(4)
    rgb = torch.randint(0, 256, (16, 24, 3), generator=gen, dtype=torch.uint8).numpy()
    png = rgb_to_compressed(rgb, make_header("cam"), fmt="png")
    assert png.format == "rgb8; png compressed bgr8" and png.header.frame_id == "cam"
    np.testing.assert_array_equal(compressed_to_rgb(png), rgb)
    smooth = np.zeros((32, 32, 3), np.uint8)
    smooth[..., 0] = 200  # red, so a channel swap would show
    jpg = compressed_to_rgb(rgb_to_compressed(smooth, fmt="jpeg", quality=95))
    assert np.abs(jpg.astype(int) - smooth).max() <= 3
    with pytest.raises(ImageConversionError, match="empty"):
        compressed_to_rgb(CompressedImage(format="jpeg"))
    with pytest.raises(ImageConversionError, match="neither JPEG nor PNG"):
        compressed_to_rgb(CompressedImage(format="jpeg", data=array.array("B", b"nope" * 9)))
    # A JPEG cut after its headers: the size is read, the decoder then fails.
    cut = bytes(rgb_to_compressed(rgb, fmt="jpeg").data)[:700]
    with pytest.raises(ImageConversionError, match="could not decode"):
        compressed_to_rgb(CompressedImage(format="jpeg", data=array.array("B", cut)))
    with pytest.raises(ImageConversionError, match="depth"):
        compressed_to_rgb(CompressedImage(format="16UC1; compressedDepth", data=png.data))


def _declaring(fmt: str, width: int, height: int) -> bytes:
    """A small real JPEG / PNG whose header is patched to declare ``width x height``."""
    data = bytearray(rgb_to_compressed(np.zeros((8, 8, 3), np.uint8), fmt=fmt).data)
    if fmt == "png":
        data[16:24] = struct.pack(">II", width, height)  # IHDR (its CRC is not checked)
    else:
        sof = next(i for i in range(2, len(data) - 9)
                   if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2))
        data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_size_reads_the_header(fmt: str) -> None:
    rgb = np.zeros((37, 51, 3), np.uint8)
    assert compressed_size(bytes(rgb_to_compressed(rgb, fmt=fmt).data)) == (51, 37)
    assert compressed_size(_declaring(fmt, 20000, 15000)) == (20000, 15000)


def test_progressive_jpeg_size() -> None:
    import cv2

    ok, enc = cv2.imencode(".jpg", np.full((33, 44, 3), 90, np.uint8),
                           [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok and compressed_size(enc.reshape(-1)) == (44, 33)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_huge_declared_size_is_refused_before_decoding(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cv2

    msg = CompressedImage(format=fmt, data=array.array("B", _declaring(fmt, 20000, 20000)))

    def no_decode(*args: object) -> None:
        raise AssertionError("decoded an image over the limit")

    monkeypatch.setattr(cv2, "imdecode", no_decode)
    with pytest.raises(ImageTooLargeError, match="20000x20000"):
        compressed_to_rgb(msg, max_pixels=16_000_000)
    with pytest.raises(ImageTooLargeError):
        check_image_size(msg, 16_000_000)


def test_raw_image_over_the_limit() -> None:
    img = array_to_image(np.zeros((30, 40, 3), np.uint8), "rgb8")
    check_image_size(img, 1200)  # exactly at the limit: accepted
    assert image_to_rgb(img, max_pixels=1200).shape == (30, 40, 3)
    with pytest.raises(ImageTooLargeError, match="40x30"):
        image_to_rgb(img, max_pixels=1199)
    with pytest.raises(ImageTooLargeError):
        check_image_size(img, 1199)
