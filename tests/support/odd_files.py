"""Files the way cameras, phones, editors, scanners and graphics tools really write them, made in
memory, each with what a viewer shows for it (and so what the service must make of it).

Every kind the service reads is here: each EXIF orientation in each format that carries one,
broken and odd EXIF blocks, every pixel mode (bilevel, palette with and without transparency,
greyscale and colour with alpha, 16-bit, 32-bit integer, floating point, CMYK, YCbCr, CIE
L*a*b*), oversized PNG metadata, animations and multi-page files, and the phone and web formats
(HEIC, HEIF, AVIF, WebP), TIFF in both byte orders and multi-picture JPEG. `ODD_FILES` lists
them all.
"""

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageCms, ImageDraw, TiffImagePlugin, TiffTags

from app.imaging.formats import sniff_format
from app.imaging.picture import as_displayed, open_image
from tests.support.images import encode, scene

ORIENTATION = 0x0112
MAKE = 0x010F
X_RESOLUTION = 0x011A
# What each EXIF orientation does to the stored pixels to display them, undone: the stored
# pixels of an upright picture with that orientation.
_STORED_FOR_ORIENTATION = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@dataclass(frozen=True)
class OddFile:
    """A file and what the service must make of it: `displayed` is what a viewer shows (RGB,
    transparency over white) when it is accepted; `refused` the error code otherwise."""

    name: str
    data: bytes
    displayed: Image.Image | None = None
    content_type: str = ""
    # How far, on average over pixels and channels (0..255), the service's picture may be from
    # `displayed`: lossy formats and colour conversions move pixels a little.
    tolerance: float = 10.0
    metadata: dict[str, Any] = field(default_factory=dict)  # a subset the record must hold
    refused: str = ""  # the error code, for files the service must refuse

    @property
    def size(self) -> tuple[int, int]:
        if self.displayed is None:
            raise ValueError(f"{self.name} is refused: it has no displayed size")
        return self.displayed.size


def upright(width: int = 160, height: int = 120, seed: int = 11) -> Image.Image:
    """The picture most files below show: clearly not symmetric, so a wrong turn shows."""
    picture = scene(width, height, seed=seed)
    ImageDraw.Draw(picture).rectangle((0, 0, width // 4, height // 5), fill=(250, 20, 20))
    return picture


def stored_for(picture: Image.Image, orientation: int) -> Image.Image:
    """The pixels a camera stores for `picture` when it writes EXIF `orientation`."""
    transposition = _STORED_FOR_ORIENTATION[orientation]
    return picture if transposition is None else picture.transpose(transposition)


def exif_block(orientation: int | None = None, **text_tags: str | bytes) -> bytes:
    """An EXIF block with this orientation and these text tags (`Make="Acme"`)."""
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    for name, value in text_tags.items():
        exif[ExifTags.Base[name]] = value
    return exif.tobytes()


def _signed_resolution_directory(orientation: int) -> TiffImagePlugin.ImageFileDirectory_v2:
    directory = TiffImagePlugin.ImageFileDirectory_v2(prefix=b"II")
    directory[ORIENTATION] = orientation
    directory[X_RESOLUTION] = TiffImagePlugin.IFDRational(-1, 1)
    directory.tagtype[X_RESOLUTION] = TiffTags.SIGNED_RATIONAL
    return directory


def signed_resolution_exif(orientation: int) -> bytes:
    """EXIF whose XResolution is a *signed* rational, -1/1: Pillow reads it, but cannot write
    the block back (its writer takes XResolution as unsigned), so rewriting it to drop the
    orientation fails."""
    directory = _signed_resolution_directory(orientation)
    return b"Exif\x00\x00II*\x00\x08\x00\x00\x00" + directory.tobytes(8)


def with_app1(jpeg: bytes, payload: bytes) -> bytes:
    """`jpeg` with an APP1 segment carrying `payload`, right after the SOI marker."""
    segment = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return jpeg[:2] + segment + jpeg[2:]


# --- PNG, chunk by chunk --------------------------------------------------------------------


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload)
    return len(payload).to_bytes(4, "big") + kind + payload + crc.to_bytes(4, "big")


def png_from_rows(
    pixels: np.ndarray[Any, Any],
    colour_type: int,
    *,
    before_data: list[bytes] | None = None,
    after_data: list[bytes] | None = None,
) -> bytes:
    """A PNG of `pixels` (height x width [x channels], uint8 or uint16), colour type 0 (grey),
    2 (RGB), 4 (grey + alpha) or 6 (RGBA), with extra chunks before and after its pixel data."""
    bit_depth = 16 if pixels.dtype == np.uint16 else 8
    height, width = pixels.shape[:2]
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    raw = pixels.astype(">u2" if bit_depth == 16 else np.uint8).reshape(height, -1).tobytes()
    stride = len(raw) // height
    rows = b"".join(b"\x00" + raw[row * stride : (row + 1) * stride] for row in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + b"".join(before_data or [])
        + png_chunk(b"IDAT", zlib.compress(rows))
        + b"".join(after_data or [])
        + png_chunk(b"IEND", b"")
    )


def ztxt_chunk(inflated_size: int, keyword: bytes = b"Comment") -> bytes:
    """A compressed text chunk that inflates to `inflated_size` bytes (a few kB on disk)."""
    return png_chunk(b"zTXt", keyword + b"\x00\x00" + zlib.compress(b"a" * inflated_size, 9))


def itxt_chunk(inflated_size: int) -> bytes:
    compressed = zlib.compress(b"a" * inflated_size, 9)
    return png_chunk(b"iTXt", b"Description\x00\x01\x00en\x00\x00" + compressed)


def iccp_chunk(inflated_size: int) -> bytes:
    return png_chunk(b"iCCP", b"huge\x00\x00" + zlib.compress(b"\x00" * inflated_size, 9))


ONE_MB = 1024 * 1024


# --- the corpus -----------------------------------------------------------------------------


def _transparent_badge(under: tuple[int, int, int]) -> tuple[bytes, Image.Image]:
    """A round badge on a transparent square, `under` being the RGB of the transparent pixels
    (which no viewer shows), and how it looks."""
    size = 128
    badge = Image.new("RGBA", (size, size), (*under, 0))
    draw = ImageDraw.Draw(badge)
    draw.ellipse((12, 12, 116, 116), fill=(200, 30, 30, 255))
    draw.rectangle((44, 54, 84, 74), fill=(255, 255, 255, 255))
    shown = Image.new("RGB", (size, size), (255, 255, 255))
    shown.paste(badge, mask=badge.getchannel("A"))
    return encode(badge, "PNG"), shown


def _on_white(rgba: Image.Image) -> Image.Image:
    shown = Image.new("RGB", rgba.size, (255, 255, 255))
    shown.paste(rgba, mask=rgba.getchannel("A"))
    return shown


def _half_transparent(picture: Image.Image) -> Image.Image:
    """`picture` with its right half fully transparent and a soft band in the middle."""
    width, height = picture.size
    alpha = np.zeros((height, width), dtype=np.uint8)
    alpha[:, : width // 2] = 255
    alpha[:, width // 2 - 8 : width // 2 + 8] = 128
    rgba = picture.convert("RGBA")
    rgba.putalpha(Image.fromarray(alpha))
    return rgba


def _orientations() -> list[OddFile]:
    picture = upright()
    files = [
        OddFile(
            f"jpeg_exif_orientation_{orientation}",
            encode(
                stored_for(picture, orientation),
                "JPEG",
                quality=95,
                exif=exif_block(orientation),
            ),
            picture,
            "image/jpeg",
            metadata={"exif": {"orientation": orientation}},
        )
        for orientation in range(1, 9)
    ]
    files += [
        # Item 1 of issue 13: Pillow cannot rewrite this EXIF block while turning the picture.
        OddFile(
            "jpeg_orientation_6_with_signed_rational_resolution",
            encode(stored_for(picture, 6), "JPEG", quality=95, exif=signed_resolution_exif(6)),
            picture,
            "image/jpeg",
            metadata={"exif": {"orientation": 6}},
        ),
        OddFile(
            "jpeg_orientation_out_of_range_is_ignored",
            encode(picture, "JPEG", quality=95, exif=exif_block(9)),
            picture,
            "image/jpeg",
        ),
        OddFile(
            "jpeg_garbage_exif_is_ignored",
            with_app1(
                encode(picture, "JPEG", quality=95), b"Exif\x00\x00" + b"\xde\xad\xbe\xef" * 8
            ),
            picture,
            "image/jpeg",
        ),
        OddFile(
            "jpeg_exif_ifd_pointing_past_the_end",
            with_app1(
                encode(picture, "JPEG", quality=95),
                b"Exif\x00\x00II*\x00\xff\xff\xff\x7f",
            ),
            picture,
            "image/jpeg",
        ),
        OddFile(
            "png_exif_chunk_orientation_8",
            encode(stored_for(picture, 8), "PNG", exif=exif_block(8, Make="Screenshots Inc")),
            picture,
            "image/png",
            tolerance=0.5,
            metadata={"exif": {"orientation": 8, "camera_make": "Screenshots Inc"}},
        ),
        OddFile(
            "webp_exif_orientation_6",
            encode(stored_for(picture, 6), "WEBP", quality=95, exif=exif_block(6, Model="Pixel")),
            picture,
            "image/webp",
            tolerance=6.0,
            metadata={"exif": {"orientation": 6, "camera_model": "Pixel"}},
        ),
        # Pillow's TIFF decoder turns the pixels itself while loading.
        OddFile(
            "tiff_orientation_tag_6",
            encode(stored_for(picture, 6), "TIFF", tiffinfo={ORIENTATION: 6, MAKE: "Scanner Co"}),
            picture,
            "image/tiff",
            tolerance=0.5,
            metadata={"exif": {"orientation": 6, "camera_make": "Scanner Co"}},
        ),
        OddFile(
            "tiff_orientation_6_with_signed_rational_resolution",
            encode(stored_for(picture, 6), "TIFF", tiffinfo=_signed_resolution_directory(6)),
            picture,
            "image/tiff",
            tolerance=0.5,
        ),
        # AVIF and HEIF carry the turn as `irot`/`imir` boxes (written from the EXIF here).
        OddFile(
            "avif_rotated",
            encode(stored_for(picture, 6), "AVIF", quality=90, exif=exif_block(6, Make="Acme")),
            picture,
            "image/avif",
            tolerance=8.0,
            metadata={"exif": {"camera_make": "Acme"}},
        ),
        OddFile(
            "heic_rotated",
            encode(stored_for(picture, 6), "HEIF", quality=90, exif=exif_block(6, Make="Apple")),
            picture,
            "image/heic",
            tolerance=8.0,
            metadata={"exif": {"camera_make": "Apple"}},
        ),
    ]
    return files


def _modes() -> list[OddFile]:
    picture = upright()
    grey = picture.convert("L")
    grey_array = np.asarray(grey)
    rgb_array = np.asarray(picture)
    half = _half_transparent(picture)
    lab = ImageCms.applyTransform(
        picture,
        ImageCms.buildTransform(
            ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB"
        ),
    )
    assert lab is not None
    palette = picture.quantize(64)
    palette_transparent = palette.copy()
    palette_transparent.info["transparency"] = int(np.asarray(palette)[0, -1])
    palette_shown = palette.convert("RGB")
    palette_shown_array = np.asarray(palette_shown).copy()
    palette_shown_array[np.asarray(palette) == palette_transparent.info["transparency"]] = 255
    key_colour = tuple(int(c) for c in rgb_array[0, -1])
    keyed_shown = rgb_array.copy()
    keyed_shown[(rgb_array == key_colour).all(axis=-1)] = 255
    black_badge, badge_shown = _transparent_badge((0, 0, 0))
    white_badge, _ = _transparent_badge((255, 255, 255))
    sixteen_rgba = np.dstack(
        [rgb_array.astype(np.uint16) * 257, np.asarray(half.getchannel("A"), np.uint16) * 257]
    )
    grey_16 = grey_array.astype(np.uint16) * 257
    transparent_grey_value = int(grey_16[0, -1])
    grey_16_shown = grey_array.copy()
    grey_16_shown[grey_16 == transparent_grey_value] = 255

    def as_rgb(image: Image.Image) -> Image.Image:
        return image.convert("RGB")

    return [
        # Item 2 of issue 13: 16-bit greyscale, values = the 8-bit picture x 257.
        OddFile(
            "png_16_bit_greyscale",
            encode(Image.fromarray(grey_16), "PNG"),
            as_rgb(grey),
            "image/png",
            tolerance=0.5,
            metadata={"mode": "I;16"},
        ),
        OddFile(
            "png_16_bit_greyscale_with_a_transparent_value",
            png_from_rows(
                grey_16,
                0,
                before_data=[png_chunk(b"tRNS", transparent_grey_value.to_bytes(2, "big"))],
            ),
            as_rgb(Image.fromarray(grey_16_shown)),
            "image/png",
            tolerance=0.5,
            metadata={"has_transparency": True},
        ),
        OddFile(
            "png_16_bit_rgb",
            png_from_rows(rgb_array.astype(np.uint16) * 257, 2),
            picture,
            "image/png",
            tolerance=0.5,
        ),
        OddFile(
            "png_16_bit_rgba",
            png_from_rows(sixteen_rgba, 6),
            _on_white(half),
            "image/png",
            tolerance=1.0,
            metadata={"has_transparency": True},
        ),
        OddFile(
            "tiff_16_bit_big_endian",
            encode(Image.frombytes("I;16B", grey.size, grey_16.astype(">u2").tobytes()), "TIFF"),
            as_rgb(grey),
            "image/tiff",
            tolerance=0.5,
        ),
        OddFile(
            "tiff_32_bit_integer",
            encode(Image.fromarray(grey_16.astype(np.int32)), "TIFF"),
            as_rgb(grey),
            "image/tiff",
            tolerance=1.0,
            metadata={"mode": "I"},
        ),
        OddFile(
            "tiff_floating_point_0_to_1",
            encode(Image.fromarray(grey_array.astype(np.float32) / 255), "TIFF"),
            as_rgb(grey),
            "image/tiff",
            tolerance=1.0,
            metadata={"mode": "F"},
        ),
        OddFile(
            "tiff_cmyk",
            encode(picture.convert("CMYK"), "TIFF"),
            picture.convert("CMYK").convert("RGB"),
            "image/tiff",
            tolerance=0.5,
        ),
        OddFile(
            "jpeg_cmyk",
            encode(picture.convert("CMYK"), "JPEG", quality=95),
            picture.convert("CMYK").convert("RGB"),
            "image/jpeg",
            tolerance=6.0,
        ),
        OddFile(
            "tiff_ycbcr",
            encode(picture.convert("YCbCr"), "TIFF"),
            picture,
            "image/tiff",
            tolerance=3.0,
        ),
        OddFile("tiff_cie_lab", encode(lab, "TIFF"), picture, "image/tiff", tolerance=4.0),
        OddFile(
            "jpeg_greyscale",
            encode(grey, "JPEG", quality=95),
            as_rgb(grey),
            "image/jpeg",
        ),
        OddFile(
            "png_bilevel",
            encode(grey.convert("1"), "PNG"),
            as_rgb(grey.convert("1")),
            "image/png",
            tolerance=0.5,
        ),
        OddFile(
            "tiff_bilevel_group4_fax",
            encode(grey.convert("1"), "TIFF", compression="group4"),
            as_rgb(grey.convert("1")),
            "image/tiff",
            tolerance=0.5,
        ),
        OddFile(
            "bmp_bilevel",
            encode(grey.convert("1"), "BMP"),
            as_rgb(grey.convert("1")),
            "image/bmp",
            tolerance=0.5,
        ),
        OddFile(
            "png_palette",
            encode(palette, "PNG"),
            palette.convert("RGB"),
            "image/png",
            tolerance=0.5,
        ),
        OddFile(
            "png_palette_with_a_transparent_entry",
            encode(palette_transparent, "PNG"),
            Image.fromarray(palette_shown_array),
            "image/png",
            tolerance=0.5,
            metadata={"has_transparency": True},
        ),
        OddFile(
            "gif_with_a_transparent_colour",
            encode(palette_transparent, "GIF"),
            Image.fromarray(palette_shown_array),
            "image/gif",
            tolerance=0.5,
            metadata={"has_transparency": True},
        ),
        OddFile(
            "png_rgb_with_a_transparent_colour_key",
            encode(picture, "PNG", transparency=key_colour),
            Image.fromarray(keyed_shown),
            "image/png",
            tolerance=0.5,
            metadata={"has_transparency": True},
        ),
        OddFile(
            "png_greyscale_with_alpha",
            encode(half.convert("LA"), "PNG"),
            _on_white(half.convert("LA").convert("RGBA")),
            "image/png",
            tolerance=0.5,
            metadata={"mode": "LA", "has_transparency": True},
        ),
        # Item 3 of issue 13: the same badge, black or white under its transparent pixels.
        OddFile(
            "png_badge_black_under_transparency",
            black_badge,
            badge_shown,
            "image/png",
            tolerance=0.5,
            metadata={"has_transparency": True},
        ),
        OddFile(
            "png_badge_white_under_transparency",
            white_badge,
            badge_shown,
            "image/png",
            tolerance=0.5,
            metadata={"has_transparency": True},
        ),
        OddFile(
            "webp_with_alpha",
            encode(half, "WEBP", lossless=True),
            _on_white(half),
            "image/webp",
            tolerance=0.5,
            metadata={"has_transparency": True},
        ),
        OddFile(
            "heic_with_alpha",
            encode(half, "HEIF", quality=95),
            _on_white(half),
            "image/heic",
            tolerance=8.0,
            metadata={"has_transparency": True},
        ),
        OddFile(
            "tiff_with_alpha",
            encode(half, "TIFF", compression="tiff_lzw"),
            _on_white(half),
            "image/tiff",
            tolerance=0.5,
            metadata={"has_transparency": True},
        ),
    ]


def _metadata() -> list[OddFile]:
    picture = upright(96, 64)
    rgb = np.asarray(picture)
    nan_resolution = TiffImagePlugin.IFDRational(0, 0)
    return [
        # Item 6 of issue 13: Pillow refuses a text chunk inflating past 1 MB.
        OddFile(
            "png_compressed_text_inflating_past_1_mb",
            png_from_rows(rgb, 2, before_data=[ztxt_chunk(ONE_MB + 1)]),
            picture,
            "image/png",
            tolerance=0.5,
        ),
        OddFile(
            "png_international_text_inflating_past_1_mb",
            png_from_rows(rgb, 2, before_data=[itxt_chunk(ONE_MB + 1)]),
            picture,
            "image/png",
            tolerance=0.5,
        ),
        OddFile(
            "png_text_chunks_inflating_past_64_mb_in_all",
            png_from_rows(rgb, 2, before_data=[ztxt_chunk(ONE_MB - 16) for _ in range(66)]),
            picture,
            "image/png",
            tolerance=0.5,
        ),
        OddFile(
            "png_oversized_text_after_the_pixels",
            png_from_rows(rgb, 2, after_data=[ztxt_chunk(2 * ONE_MB)]),
            picture,
            "image/png",
            tolerance=0.5,
        ),
        OddFile(
            "png_text_chunk_with_a_wrong_checksum",
            png_from_rows(rgb, 2, before_data=[png_chunk(b"tEXt", b"Title\x00x")[:-4] + b"\0" * 4]),
            picture,
            "image/png",
            tolerance=0.5,
        ),
        OddFile(
            "png_icc_profile_inflating_past_1_mb",
            png_from_rows(rgb, 2, before_data=[iccp_chunk(2 * ONE_MB)]),
            picture,
            "image/png",
            tolerance=0.5,
            metadata={"has_icc_profile": False},
        ),
        OddFile(
            "jpeg_zero_resolution",
            encode(picture, "JPEG", quality=95, dpi=(0, 0)),
            picture,
            "image/jpeg",
        ),
        OddFile(
            "tiff_resolution_of_zero_over_zero",
            encode(
                picture,
                "TIFF",
                tiffinfo={X_RESOLUTION: nan_resolution, 0x011B: nan_resolution, 0x0128: 2},
            ),
            picture,
            "image/tiff",
            tolerance=0.5,
        ),
        OddFile(
            "jpeg_exif_text_with_control_characters_and_latin_1",
            encode(
                picture,
                "JPEG",
                quality=95,
                exif=exif_block(Make="Ac\x00me\x07 Cam\u00e9ra".encode(), Model="X" * 500),
            ),
            picture,
            "image/jpeg",
            metadata={"exif": {"camera_make": "Acme Caméra", "camera_model": "X" * 128}},
        ),
    ]


def _formats() -> list[OddFile]:
    picture = upright()
    other = upright(seed=12)
    heif = encode(picture, "HEIF", quality=90)
    # The same file with only the generic HEIF brand, as some cameras and converters write it.
    generic_heif = heif.replace(b"ftypheic", b"ftypmif1", 1).replace(b"mif1heic", b"mif1mif1", 1)
    big_endian_tiff = _big_endian_tiff(picture)
    return [
        OddFile("webp_lossy", encode(picture, "WEBP", quality=90), picture, "image/webp", 8.0),
        OddFile(
            "webp_lossless", encode(picture, "WEBP", lossless=True), picture, "image/webp", 0.5
        ),
        OddFile(
            "webp_animated",
            encode(
                picture,
                "WEBP",
                lossless=True,
                save_all=True,
                append_images=[other, upright(seed=13)],
            ),
            picture,
            "image/webp",
            0.5,
            metadata={"frames": 3},
        ),
        OddFile("avif", encode(picture, "AVIF", quality=90), picture, "image/avif", 8.0),
        OddFile(
            "avif_animated",
            encode(picture, "AVIF", quality=90, save_all=True, append_images=[other]),
            picture,
            "image/avif",
            8.0,
            metadata={"frames": 2},
        ),
        OddFile("heic", heif, picture, "image/heic", 8.0),
        OddFile("heif_generic_brand", generic_heif, picture, "image/heif", 8.0),
        OddFile(
            "heic_two_images",
            encode(picture, "HEIF", quality=90, save_all=True, append_images=[other]),
            picture,
            "image/heic",
            8.0,
            metadata={"frames": 2},
        ),
        # A JPEG holding several pictures (stereo cameras, phones' depth maps): the first shows.
        OddFile(
            "jpeg_multi_picture_mpo",
            # Copies: Pillow's JPEG writer leaves its settings on the pictures it saves.
            encode(picture.copy(), "MPO", quality=95, save_all=True, append_images=[other.copy()]),
            picture,
            "image/jpeg",
            metadata={"frames": 2},
        ),
        OddFile(
            "jpeg_progressive",
            encode(picture, "JPEG", quality=95, progressive=True),
            picture,
            "image/jpeg",
        ),
        OddFile(
            "png_animated_apng",
            encode(picture, "PNG", save_all=True, append_images=[other]),
            picture,
            "image/png",
            0.5,
            metadata={"frames": 2},
        ),
        OddFile("tiff_little_endian", encode(picture, "TIFF"), picture, "image/tiff", 0.5),
        OddFile("tiff_big_endian", big_endian_tiff, picture, "image/tiff", 0.5),
        OddFile(
            "tiff_lzw_three_pages",
            encode(
                picture, "TIFF", compression="tiff_lzw", save_all=True, append_images=[other] * 2
            ),
            picture,
            "image/tiff",
            0.5,
            metadata={"frames": 3},
        ),
        OddFile(
            "tiff_jpeg_compressed",
            encode(picture, "TIFF", compression="jpeg"),
            picture,
            "image/tiff",
            6.0,
        ),
        OddFile(
            "gif_animated",
            encode(picture, "GIF", save_all=True, append_images=[other]),
            picture.quantize(256).convert("RGB"),
            "image/gif",
            8.0,
            metadata={"frames": 2},
        ),
        OddFile(
            "one_pixel_png",
            encode(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"),
            Image.new("RGB", (1, 1), (9, 99, 199)),
            "image/png",
            0.5,
        ),
        OddFile(
            "png_one_pixel_high_strip",
            encode(picture.resize((3000, 1)), "PNG"),
            picture.resize((3000, 1)),
            "image/png",
            0.5,
        ),
    ]


def _big_endian_tiff(picture: Image.Image) -> bytes:
    """An uncompressed RGB TIFF in Motorola byte order ("MM"), as Macs and some scanners
    write it (Pillow itself writes "II")."""
    width, height = picture.size
    pixels = picture.tobytes()
    entries = [
        (256, 3, 1, width),  # ImageWidth
        (257, 3, 1, height),  # ImageLength
        (258, 3, 3, None),  # BitsPerSample: 8, 8, 8 (out of line)
        (259, 3, 1, 1),  # no compression
        (262, 3, 1, 2),  # RGB
        (273, 4, 1, None),  # StripOffsets
        (277, 3, 1, 3),  # SamplesPerPixel
        (278, 3, 1, height),  # RowsPerStrip
        (279, 4, 1, len(pixels)),  # StripByteCounts
    ]
    directory_size = 2 + 12 * len(entries) + 4
    bits_offset = 8 + directory_size
    pixels_offset = bits_offset + 6
    directory = len(entries).to_bytes(2, "big")
    for tag, kind, count, value in entries:
        if tag == 258:
            value = bits_offset
        elif tag == 273:
            value = pixels_offset
        assert value is not None
        packed = (
            value.to_bytes(2, "big") + b"\0\0"
            if kind == 3 and tag != 258
            else value.to_bytes(4, "big")
        )
        directory += struct.pack(">HHI", tag, kind, count) + packed
    directory += b"\0\0\0\0"
    return b"MM\x00*" + (8).to_bytes(4, "big") + directory + b"\0\x08\0\x08\0\x08" + pixels


def _refused() -> list[OddFile]:
    picture = upright()
    truncated = {
        "jpeg": encode(picture, "JPEG", quality=90),
        "png": encode(picture, "PNG"),
        "webp": encode(picture, "WEBP", quality=90),
        "avif": encode(picture, "AVIF", quality=90),
        "heic": encode(picture, "HEIF", quality=90),
        "tiff": encode(picture, "TIFF"),
    }
    files = [
        OddFile(f"truncated_{name}", data[: len(data) // 2], refused="invalid_image")
        for name, data in truncated.items()
    ]
    files += [
        # An ISO base media file of another brand: a QuickTime movie is no picture.
        OddFile(
            "quicktime_movie",
            b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  " + b"\x00" * 64,
            refused="unsupported_image_format",
        ),
        OddFile(
            "heic_brand_without_a_picture",
            b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64,
            refused="invalid_image",
        ),
    ]
    return files


_BUILDERS: tuple[Callable[[], list[OddFile]], ...] = (
    _orientations,
    _modes,
    _metadata,
    _formats,
    _refused,
)
ODD_FILES: tuple[OddFile, ...] = tuple(odd for build in _BUILDERS for odd in build())
ACCEPTED: tuple[OddFile, ...] = tuple(odd for odd in ODD_FILES if not odd.refused)
REFUSED: tuple[OddFile, ...] = tuple(odd for odd in ODD_FILES if odd.refused)
BY_NAME: dict[str, OddFile] = {odd.name: odd for odd in ODD_FILES}


def mean_difference(picture: Image.Image, expected: Image.Image) -> float:
    """Mean absolute difference of two RGB pictures of the same size, 0..255."""
    assert picture.size == expected.size, (picture.size, expected.size)
    difference = np.asarray(picture, np.int16) - np.asarray(expected.convert("RGB"), np.int16)
    return float(np.abs(difference).mean())


def decoded(data: bytes) -> Image.Image:
    """A thumbnail's or other plain file's pixels, as RGB."""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def service_picture(data: bytes) -> Image.Image:
    """What the service sees of `data`: its picture as displayed, at full size."""
    image_format = sniff_format(data)
    assert image_format is not None
    with open_image(data, image_format) as image:
        image.load()
        return as_displayed(image).copy()
