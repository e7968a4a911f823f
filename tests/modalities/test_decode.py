"""decode_bytes / read_file: every accepted format round-trips, every bad input gets its error code."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageFile

from modalities import ModalityError, ModalitySpec, decode_bytes, prepare, read_file, sniff_format
from modalities.decode import REDUCTION_GAP, reduction_factors
from modalities.kinds import IMAGENET_STD

RNG = np.random.default_rng(1234)
RGB8 = RNG.integers(0, 256, (12, 10, 3), dtype=np.uint8)
GRAY8 = RNG.integers(0, 256, (12, 10), dtype=np.uint8)


def pillow_bytes(image: Image.Image, file_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=file_format, **options)
    return buffer.getvalue()


def png_chunk(tag: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))


def raw_png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written by hand, for layouts Pillow cannot write (16-bit RGB) or lies in the header."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def tiff_bytes(array: np.ndarray, **options: object) -> bytes:
    """Like MVTec-3D: an (H, W, 3) array is one page of contiguous samples, anything else grey pages."""
    buffer = io.BytesIO()
    photometric = "rgb" if array.ndim == 3 and array.shape[2] == 3 else "minisblack"
    tifffile.imwrite(buffer, array, photometric=photometric, **options)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def assert_error(data: bytes, code: str, **kwargs: object) -> ModalityError:
    with pytest.raises(ModalityError) as caught:
        decode_bytes(data, **kwargs)
    error = caught.value
    assert error.code == code, f"expected {code}, got {error.code}: {error.message}"
    assert error.message and "\n" not in error.message
    return error


# --- accepted formats -------------------------------------------------------------------------


def test_rgb_png_round_trips_exactly() -> None:
    decoded = decode_bytes(pillow_bytes(Image.fromarray(RGB8), "PNG"))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, RGB8)


def test_gray_png_is_two_dimensional() -> None:
    decoded = decode_bytes(pillow_bytes(Image.fromarray(GRAY8), "PNG"))
    assert decoded.shape == (12, 10)
    np.testing.assert_array_equal(decoded, GRAY8)


def test_16_bit_gray_png_keeps_every_bit() -> None:
    values = (np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 541).astype(np.uint16)
    decoded = decode_bytes(pillow_bytes(Image.fromarray(values), "PNG"))
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, values)


def test_16_bit_rgb_png_decodes_to_its_high_byte() -> None:
    # Pillow has no 16-bit RGB mode; it keeps the high byte, so range (not precision) is preserved.
    values = RNG.integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in values)
    decoded = decode_bytes(raw_png(5, 4, 16, 2, rows))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, (values >> 8).astype(np.uint8))


def test_palette_png_becomes_rgb_and_transparency_becomes_alpha() -> None:
    palette_image = Image.new("P", (2, 2))
    palette_image.putdata([0, 1, 1, 2])
    palette_image.putpalette([10, 20, 30, 200, 100, 0, 5, 5, 250] + [0] * (256 * 3 - 9))
    opaque = decode_bytes(pillow_bytes(palette_image, "PNG"))
    np.testing.assert_array_equal(opaque[0, 1], [200, 100, 0])
    np.testing.assert_array_equal(opaque[1, 1], [5, 5, 250])
    assert opaque.shape == (2, 2, 3)

    transparent = decode_bytes(pillow_bytes(palette_image, "PNG", transparency=0))
    assert transparent.shape == (2, 2, 4)
    np.testing.assert_array_equal(transparent[0, 0], [10, 20, 30, 0])
    np.testing.assert_array_equal(transparent[1, 1, 3], 255)


def test_rgba_png_keeps_alpha_and_gray_alpha_drops_it() -> None:
    rgba = np.dstack([RGB8, np.full(RGB8.shape[:2], 77, np.uint8)])
    np.testing.assert_array_equal(decode_bytes(pillow_bytes(Image.fromarray(rgba), "PNG")), rgba)
    gray_alpha = Image.merge("LA", [Image.fromarray(GRAY8), Image.fromarray(np.zeros_like(GRAY8))])
    np.testing.assert_array_equal(decode_bytes(pillow_bytes(gray_alpha, "PNG")), GRAY8)


def test_one_bit_png_becomes_0_and_255() -> None:
    bits = Image.fromarray(GRAY8 > 127).convert("1")
    decoded = decode_bytes(pillow_bytes(bits, "PNG"))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, np.where(GRAY8 > 127, 255, 0))


def test_jpeg_gray_and_colour() -> None:
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (24, 1))
    gray = decode_bytes(pillow_bytes(Image.fromarray(smooth), "JPEG", quality=95))
    assert gray.shape == (24, 32) and gray.dtype == np.uint8
    assert np.abs(gray.astype(int) - smooth).mean() < 2.0
    colour = decode_bytes(pillow_bytes(Image.fromarray(np.dstack([smooth] * 3)), "JPEG", quality=95))
    assert colour.shape == (24, 32, 3)


def test_bmp_round_trips() -> None:
    np.testing.assert_array_equal(decode_bytes(pillow_bytes(Image.fromarray(RGB8), "BMP")), RGB8)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_float32_xyz_tiff_round_trips(compression: str | None) -> None:
    xyz = RNG.standard_normal((6, 7, 3)).astype(np.float32)
    xyz[0, 0] = np.nan  # MVTec-3D marks missing points with zeros or NaN; both must survive decoding
    decoded = decode_bytes(tiff_bytes(xyz, compression=compression))
    assert decoded.dtype == np.float32 and decoded.shape == (6, 7, 3)
    np.testing.assert_array_equal(decoded, xyz)


def test_16_bit_tiff_and_lzw_tiff_via_pillow_fallback() -> None:
    values = RNG.integers(0, 65536, (5, 6), dtype=np.uint16)
    np.testing.assert_array_equal(decode_bytes(tiff_bytes(values)), values)
    # tifffile needs imagecodecs for LZW; the Pillow fallback must read it instead.
    lzw = pillow_bytes(Image.fromarray(RGB8), "TIFF", compression="tiff_lzw")
    np.testing.assert_array_equal(decode_bytes(lzw), RGB8)


@pytest.mark.parametrize(
    ("array", "dtype"),
    [
        (RNG.random((4, 5)).astype(np.float32), np.float32),
        (RNG.random((4, 5)), np.float32),
        (RGB8, np.uint8),
        (RNG.integers(0, 9, (4, 5)).astype(np.int32), np.int32),
        (RNG.random((4, 5)).astype(">f4"), np.float32),
        (np.asfortranarray(RNG.random((4, 5, 3))).astype(np.float32, order="F"), np.float32),
    ],
    ids=["float32", "float64", "uint8-rgb", "int32", "big-endian", "fortran"],
)
def test_npy_arrays_decode_with_canonical_dtype(array: np.ndarray, dtype: type) -> None:
    decoded = decode_bytes(npy_bytes(array))
    assert decoded.dtype == np.dtype(dtype) and decoded.dtype.isnative
    np.testing.assert_array_equal(decoded, array.astype(dtype))
    decoded[...] = 0  # the caller owns a writable copy, not a view of the upload


def test_trailing_single_channel_is_squeezed() -> None:
    assert decode_bytes(npy_bytes(np.ones((4, 5, 1), np.float32))).shape == (4, 5)


def test_sniffing_ignores_names_and_reads_magic() -> None:
    assert sniff_format(npy_bytes(GRAY8)) == "npy"
    assert sniff_format(tiff_bytes(GRAY8)) == "tiff"
    assert sniff_format(pillow_bytes(Image.fromarray(GRAY8), "JPEG")) == "jpeg"
    assert sniff_format(b"GIF89a....") is None


def test_read_file(tmp_path) -> None:
    path = tmp_path / "image.tiff"  # the content is PNG: the extension must not matter
    path.write_bytes(pillow_bytes(Image.fromarray(RGB8), "PNG"))
    np.testing.assert_array_equal(read_file(path), RGB8)
    with pytest.raises(ModalityError) as missing:
        read_file(tmp_path / "absent.png")
    assert missing.value.code == "file_not_found"
    with pytest.raises(ModalityError) as directory:
        read_file(tmp_path)
    assert directory.value.code == "unreadable_file"


def test_decoding_is_deterministic() -> None:
    data = pillow_bytes(Image.fromarray(RGB8), "JPEG")
    np.testing.assert_array_equal(decode_bytes(data), decode_bytes(data))


def test_pillow_truncated_loading_stays_disabled() -> None:
    import modalities  # noqa: F401 - importing the package must not relax Pillow

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --- bad input ----------------------------------------------------------------------------------


def test_empty_file() -> None:
    assert_error(b"", "empty_file")


@pytest.mark.parametrize(
    "data",
    [b"hello, this is not an image", b"GIF89a\x01\x00\x01\x00", b"PK\x03\x04npz-archive", b"\x00" * 64],
    ids=["text", "gif", "zip", "zeros"],
)
def test_unknown_format(data: bytes) -> None:
    assert_error(data, "unsupported_format")


@pytest.mark.parametrize("file_format", ["PNG", "JPEG"])
def test_truncated_png_and_jpeg(file_format: str) -> None:
    noisy = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # noise: pixel data dominates the file
    data = pillow_bytes(Image.fromarray(noisy), file_format)
    assert_error(data[: len(data) // 2], "truncated_image")
    assert_error(data[: len(data) - 200], "truncated_image")


def test_png_without_pixel_data_is_corrupt() -> None:
    data = pillow_bytes(Image.fromarray(RGB8), "PNG")
    assert_error(data[:40], "corrupt_image")


def test_png_with_bad_checksum_is_corrupt() -> None:
    data = bytearray(pillow_bytes(Image.fromarray(RGB8), "PNG"))
    data[-20] ^= 0xFF  # inside the IDAT payload: its CRC no longer matches
    assert_error(bytes(data), "corrupt_image")


@pytest.mark.filterwarnings(
    "ignore::PIL.Image.DecompressionBombWarning"
)  # Pillow's own warning, then our limit
def test_pixel_count_is_checked_before_decoding() -> None:
    # The header claims 10000x10000 but carries almost no data: decoding it would report truncation,
    # so too_many_pixels proves the limit is applied from the header.
    claims_huge = raw_png(10_000, 10_000, 8, 0, b"\x00" * 100)
    error = assert_error(claims_huge, "too_many_pixels")
    assert "40000000" in error.message
    # Beyond twice Pillow's own limit Pillow raises DecompressionBombError while opening.
    assert_error(raw_png(100_000, 100_000, 8, 0, b"\x00"), "too_many_pixels")


@pytest.mark.parametrize(
    "data",
    [
        pillow_bytes(Image.fromarray(RGB8), "PNG"),
        pillow_bytes(Image.fromarray(RGB8), "JPEG"),
        pillow_bytes(Image.fromarray(RGB8), "BMP"),
        tiff_bytes(RGB8),
        npy_bytes(RGB8),
    ],
    ids=["png", "jpeg", "bmp", "tiff", "npy"],
)
def test_max_pixels_applies_to_every_format(data: bytes) -> None:
    assert_error(data, "too_many_pixels", max_pixels=12 * 10 - 1)
    assert decode_bytes(data, max_pixels=12 * 10).shape[:2] == (12, 10)


@pytest.mark.filterwarnings("ignore::UserWarning")  # the Pillow fallback warns about the garbage tags
def test_unreadable_tiff() -> None:
    assert_error(b"II*\x00" + b"\xff" * 60, "unreadable_tiff")
    data = tiff_bytes(RNG.random((64, 64)).astype(np.float32))
    assert_error(data[: len(data) // 3], "unreadable_tiff")


def test_tiff_page_stack_is_rejected_by_shape() -> None:
    assert_error(tiff_bytes(np.zeros((5, 8, 8), np.uint8)), "bad_channel_count")


def test_npy_with_pickled_objects_is_rejected_without_unpickling() -> None:
    data = npy_bytes(np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    assert_error(data, "bad_array_dtype")


@pytest.mark.parametrize(
    "data",
    [
        b"\x93NUMPY\x01\x00",
        b"\x93NUMPY\x01\x00\x10\x00{'descr': <bad}  \n",
        b"\x93NUMPY\x09\x00\x10\x00" + b" " * 16,
    ],
    ids=["no-header", "bad-literal", "unknown-version"],
)
def test_npy_with_malformed_header(data: bytes) -> None:
    assert_error(data, "bad_npy")


def test_npy_with_missing_data() -> None:
    data = npy_bytes(np.zeros((20, 20), np.float32))
    assert "truncated" in assert_error(data[:-8], "bad_npy").message


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((4, 4), np.complex64),
        np.zeros((4, 4), bool),
        np.zeros((4, 4), "U3"),
        np.zeros((4, 4), [("a", "f4"), ("b", "f4")]),
        np.zeros((4, 4), "datetime64[s]"),
    ],
    ids=["complex", "bool", "string", "structured", "datetime"],
)
def test_npy_with_non_numeric_dtype(array: np.ndarray) -> None:
    assert_error(npy_bytes(array), "bad_array_dtype")


@pytest.mark.parametrize(
    ("shape", "code"),
    [
        ((16,), "bad_array_rank"),
        ((2, 3, 4, 3), "bad_array_rank"),
        ((), "bad_array_rank"),
        ((4, 4, 2), "bad_channel_count"),
        ((4, 4, 5), "bad_channel_count"),
        ((0, 4), "empty_array"),
    ],
)
def test_npy_with_wrong_shape(shape: tuple[int, ...], code: str) -> None:
    assert_error(npy_bytes(np.zeros(shape, np.float32)), code)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the corrupt TIFF tags it skips
@pytest.mark.parametrize(
    "data",
    [
        pillow_bytes(Image.fromarray(RGB8), "PNG"),
        pillow_bytes(Image.fromarray(RGB8), "JPEG"),
        pillow_bytes(Image.fromarray(RGB8), "BMP"),
        tiff_bytes(RNG.random((6, 7, 3)).astype(np.float32)),
        npy_bytes(RNG.random((6, 7)).astype(np.float32)),
    ],
    ids=["png", "jpeg", "bmp", "tiff", "npy"],
)
def test_corrupted_bytes_never_escape_as_other_exceptions(data: bytes) -> None:
    rng = np.random.default_rng(7)
    for _ in range(40):
        mutated = bytearray(data)
        for position in rng.integers(0, len(data), size=int(rng.integers(1, 6))):
            mutated[position] = int(rng.integers(0, 256))
        cut = int(rng.integers(1, len(data) + 1))
        try:
            decoded = decode_bytes(bytes(mutated[:cut]))
        except ModalityError as error:
            assert error.message and "\n" not in error.message
        else:
            assert decoded.ndim in (2, 3) and decoded.dtype.kind in "uif"


# reduce_to: huge uploads are reduced while decoding, never holding more than needed.


def test_reduction_factors_keep_every_axis_at_least_the_gap_times_the_output_side() -> None:
    assert reduction_factors(5000, 900, None) == (1, 1)
    assert reduction_factors(5000, 900, 128) == (4, 1)  # 5000 // 1024; 900 < 1024 stays whole
    assert reduction_factors(2047, 2048, 128) == (1, 2)
    with pytest.raises(ModalityError, match="reduce_to"):
        reduction_factors(10, 10, 0)


@pytest.mark.parametrize(
    ("array", "options"),
    [
        (RNG.integers(0, 256, (301, 257, 3), dtype=np.uint8), {"compression": "zlib", "rowsperstrip": 7}),
        (RNG.integers(0, 65536, (301, 257), dtype=np.uint16), {"compression": "zlib", "predictor": True}),
        (RNG.random((301, 257, 3), dtype=np.float32), {}),
        (RNG.random((301, 257, 3), dtype=np.float32), {"tile": (64, 64), "compression": "zlib"}),
        (RNG.integers(0, 256, (301, 257), dtype=np.uint8), {"tile": (32, 48)}),
    ],
    ids=["rgb8-strips", "gray16-predictor", "xyz-float", "xyz-tiled", "gray8-edge-tiles"],
)
def test_reduced_tiff_and_npy_keep_exactly_every_kth_pixel(array: np.ndarray, options: dict) -> None:
    for size in (4, 8, 16, 64):
        ky, kx = reduction_factors(*array.shape[:2], size)
        expected = array[::ky, ::kx]
        np.testing.assert_array_equal(decode_bytes(tiff_bytes(array, **options), reduce_to=size), expected)
        np.testing.assert_array_equal(decode_bytes(npy_bytes(array), reduce_to=size), expected)


def test_reduced_png_is_the_box_average_and_jpeg_decodes_at_a_dct_scale() -> None:
    image = Image.fromarray(RNG.integers(0, 256, (300, 520, 3), dtype=np.uint8))
    reduced = decode_bytes(pillow_bytes(image, "PNG"), reduce_to=16)  # factors (2, 4)
    np.testing.assert_array_equal(reduced, np.asarray(image.reduce((4, 2))))
    for size in (4, 16, 32):
        floor = REDUCTION_GAP * size
        shape = decode_bytes(pillow_bytes(image, "JPEG"), reduce_to=size).shape
        assert floor <= shape[0] < 2 * floor
        assert floor <= shape[1] < 2 * floor


def test_reduction_changes_the_model_input_by_about_a_grey_level() -> None:
    """A 4000 x 3000 photo-like image (texture plus strong pixel noise), PNG and JPEG, prepared at 128 px."""
    y, x = np.mgrid[0:3000, 0:4000]
    noise = np.random.default_rng(0).normal(0, 20, (3000, 4000))
    plane = (127 + 60 * np.sin(x / 37.0) * np.cos(y / 53.0) + noise).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(np.dstack([plane, np.roll(plane, 7, 0), np.roll(plane, 5, 1)]))
    rgb = ModalitySpec("rgb", "rgb")
    for file_format in ("PNG", "JPEG"):
        data = pillow_bytes(image, file_format)
        full = prepare(decode_bytes(data), rgb, 128)
        reduced = prepare(decode_bytes(data, reduce_to=128), rgb, 128)
        levels = np.abs(full - reduced) * np.array(IMAGENET_STD)[:, None, None] * 255
        assert levels.mean() < 1.0 and levels.max() < 5.0, (file_format, levels.mean(), levels.max())


def test_a_reduced_tiff_never_holds_the_full_image() -> None:
    xyz = np.zeros((3000, 3000, 3), np.float32)  # 108 MB decoded, a few hundred kB deflated
    xyz[..., 2] = 0.5
    data = tiff_bytes(xyz, compression="zlib")
    tracemalloc.start()
    try:
        decode_bytes(data, reduce_to=16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < xyz.nbytes / 20, (
        f"peak {peak / 1e6:.1f} MB while reducing a {xyz.nbytes / 1e6:.0f} MB image"
    )
