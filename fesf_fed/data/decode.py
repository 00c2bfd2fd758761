"""Decode one image file into a square float image, and match channel counts.

Every supported file becomes a ``(C, size, size)`` float32 array in ``[0, 1]``:
resized to a square without keeping the aspect ratio (as the paper does), with
C = 1 for greyscale and 3 for colour. Anything that cannot be decoded raises
:class:`UnreadableImage`, so a loader can list the file as skipped instead of
crashing.
"""

from pathlib import Path

import numpy as np
import pydicom
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut
from skimage.color import rgb2gray
from skimage.transform import resize

from fesf_fed.errors import DataError

#: File endings read as images (compared case-insensitively).
IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm"})

#: An RGB image counts as grey when its mean channel spread (per-pixel max - min)
#: is at most this fraction of its mean brightness. Greyscale scans saved as RGB
#: JPEGs pick up chroma noise and faint tints (Br35H reaches 0.083); colour fundus
#: photographs (RetinaMNIST) start at 0.15.
GREY_TOLERANCE = 0.12

# PIL modes with more than 8 bits per sample; they are scaled by their own range.
_HIGH_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# PIL modes that hold one grey channel (with or without alpha); everything else becomes RGB.
_GREY_MODES = frozenset({"1", "L", "LA", "La"})
_CORRUPT_HINT = "the file is corrupt, truncated or not an image; re-export it or remove it"
#: Images narrower or lower than this many pixels get a warning from :func:`image_notes`.
MIN_SIDE = 8
_STRETCHED = "stretched to its own darkest and brightest pixel, so brightness is not comparable between files"
#: What :func:`image_notes` says about each PIL mode other than 8-bit grey ("L") and RGB.
_MODE_NOTES = {
    "1": "1-bit black-and-white image; a scan usually has grey levels",
    "P": "palette image: converted to RGB, or grey if its palette is grey",
    "PA": "palette image with transparency: converted to RGB, transparency dropped",
    "LA": "grey image with transparency: transparency dropped",
    "La": "grey image with transparency: transparency dropped",
    "RGBA": "RGB image with transparency: transparency dropped",
    "RGBa": "RGB image with transparency: transparency dropped",
    "CMYK": "CMYK (print) image: converted to RGB, colours may shift",
    "I": f"32-bit integer image: {_STRETCHED}",
    "F": f"floating-point image: {_STRETCHED}",
    **{mode: f"16-bit image: {_STRETCHED}" for mode in ("I;16", "I;16B", "I;16L", "I;16N")},
}


class UnreadableImage(DataError):
    """An image file that cannot be decoded.

    Attributes
    ----------
    path : Path
        The file.
    reason : str
        What is wrong and what to do, without the path (for lists of skipped files).
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _pil_pixels(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as opened:
            frames = getattr(opened, "n_frames", 1)
            # JPEG only: decode at the smallest 1/2^k scale still at least size x size,
            # an anti-aliased shrink that makes large files several times faster to read.
            opened.draft(opened.mode, (size, size))
            # PIL reads lazily; load() decodes every byte so truncation is caught here.
            opened.load()
            image = ImageOps.exif_transpose(opened)
            if image.mode in _HIGH_DEPTH_MODES:
                pixels = np.asarray(image)
            else:
                pixels = np.asarray(image.convert("L" if image.mode in _GREY_MODES else "RGB"))
    except UnidentifiedImageError:
        raise UnreadableImage(path, f"not a recognised image format; {_CORRUPT_HINT}") from None
    # Decoders raise many types on bad input (OSError, SyntaxError, ValueError, struct.error...).
    except Exception as exc:  # noqa: BLE001  re-raised as UnreadableImage, one line
        raise UnreadableImage(path, f"cannot decode ({exc}); {_CORRUPT_HINT}") from None
    if frames > 1:
        raise UnreadableImage(path, f"holds {frames} frames; save one image per file")
    return pixels


def _dicom_pixels(path: Path) -> np.ndarray:
    try:
        dataset = pydicom.dcmread(path)
    except InvalidDicomError:
        raise UnreadableImage(path, "not a DICOM file (no DICM header); re-export it as DICOM or PNG") from None
    except Exception as exc:  # noqa: BLE001  pydicom raises many types; re-raised as one line
        raise UnreadableImage(path, f"cannot read DICOM ({exc}); {_CORRUPT_HINT}") from None
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise UnreadableImage(path, f"multi-frame DICOM ({frames} frames); export one slice per file")
    try:
        pixels = dataset.pixel_array
    except Exception as exc:  # noqa: BLE001  pixel decoders raise many types; re-raised as one line
        syntax = dataset.file_meta.get("TransferSyntaxUID", "unknown")
        name = getattr(syntax, "name", syntax)
        raise UnreadableImage(
            path,
            f"cannot decode the pixel data (transfer syntax {name}: {exc}); "
            "convert it to uncompressed DICOM (e.g. gdcmconv --raw) or to PNG",
        ) from None
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric == "PALETTE COLOR":
        return apply_color_lut(pixels, dataset)
    if pixels.ndim == 3:
        return pixels
    # Rescale slope and intercept; image_from_pixels then stretches to the file's own range.
    values = apply_modality_lut(pixels, dataset).astype(np.float64)
    # MONOCHROME1 stores white as the minimum.
    return -values if photometric == "MONOCHROME1" else values


def _stretch(values: np.ndarray) -> np.ndarray:
    """Map an array's minimum to 0 and its maximum to 1 (a constant array becomes 0)."""
    values = values.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros_like(values)
    return (values - low) / (high - low)


def _looks_grey(pixels: np.ndarray) -> bool:
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    # Element-wise over three planes: far faster than max(axis=-1) on a length-3 axis.
    spread = np.maximum(np.maximum(red, green), blue) - np.minimum(np.minimum(red, green), blue)
    return bool(spread.mean() <= GREY_TOLERANCE * pixels.mean())


def _resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """``(size, size)`` resize of an ``(H, W)`` or ``(H, W, 3)`` image, channels first, float32 in [0, 1]."""
    if pixels.dtype == np.uint8:
        # PIL's bicubic filter widens when shrinking (anti-aliased) and releases the GIL,
        # so threads resize in parallel.
        squared = Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC)
        resized = np.asarray(squared, dtype=np.float32) / 255.0
    else:
        resized = np.clip(resize(pixels, (size, size), anti_aliasing=True), 0.0, 1.0).astype(np.float32)
    return resized[np.newaxis] if resized.ndim == 2 else np.ascontiguousarray(np.moveaxis(resized, -1, 0))


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")


def image_from_pixels(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize a decoded image to a square and put its channels first.

    Parameters
    ----------
    pixels : np.ndarray
        ``(H, W)`` or ``(H, W, 3)``; uint8 (read as ``value / 255``) or any other
        numeric type, which is stretched to ``[0, 1]`` by its own minimum and maximum
        (16-bit scans seldom use the full range).
    size : int
        Height and width of the result.

    Returns
    -------
    np.ndarray
        ``(C, size, size)`` float32 in ``[0, 1]``; C = 1 when the input is grey,
        including an RGB image whose channels agree within :data:`GREY_TOLERANCE`.
    """
    _check_size(size)
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[-1] == 3)):
        raise ValueError(f"pixels must be (H, W) or (H, W, 3), got shape {pixels.shape}")
    if pixels.dtype != np.uint8:
        pixels = _stretch(pixels)
    if pixels.ndim == 3 and _looks_grey(pixels):
        # Before resizing: one channel is a third of the work.
        pixels = to_channels(np.moveaxis(pixels, -1, 0), 1)[0]
    return _resize(pixels, size)


def read_image(path: Path, size: int) -> np.ndarray:
    """Decode one image file and resize it to ``size x size``.

    Parameters
    ----------
    path : Path
        A PNG, JPEG, BMP, TIFF (8 or 16 bit) or uncompressed/natively supported DICOM
        file; the ending must be one of :data:`IMAGE_SUFFIXES`. Palette, RGBA and CMYK
        images become RGB. DICOM gets its rescale slope and intercept applied, is
        stretched to [0, 1] and inverted when MONOCHROME1.
    size : int
        Height and width of the result; the aspect ratio is not kept.

    Returns
    -------
    np.ndarray
        ``(C, size, size)`` float32 in ``[0, 1]``, C = 1 for grey and 3 for colour.

    Raises
    ------
    UnreadableImage
        A :class:`~fesf_fed.errors.DataError` naming the file, the problem and what
        to do: a missing, empty, truncated or corrupt file, an unsupported ending,
        a multi-frame file or an unsupported DICOM transfer syntax.
    """
    _check_size(size)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        supported = ", ".join(sorted(IMAGE_SUFFIXES))
        raise UnreadableImage(path, f"not an image file ({path.suffix or 'no ending'}); supported: {supported}")
    if not path.is_file():
        raise UnreadableImage(path, "file not found; check the path")
    if path.stat().st_size == 0:
        raise UnreadableImage(path, "empty file (0 bytes); re-export it or remove it")
    pixels = _dicom_pixels(path) if suffix == ".dcm" else _pil_pixels(path, size)
    try:
        return image_from_pixels(pixels, size)
    except ValueError as exc:
        raise UnreadableImage(path, f"unsupported pixel layout ({exc}); save it as 8-bit grey or RGB") from None


def _size_note(width: int, height: int) -> list[str]:
    if min(width, height) >= MIN_SIDE:
        return []
    return [f"tiny image ({width}x{height} px): resized up, it holds almost no detail; check that it is a real scan"]


def image_notes(path: Path) -> list[str]:
    """Warnings about an image file that decodes but may not be what was meant; reads only its header.

    Parameters
    ----------
    path : Path
        A file :func:`read_image` decodes.

    Returns
    -------
    list of str
        Nothing for an 8-bit grey or RGB image of at least :data:`MIN_SIDE` pixels a
        side; else what is unusual and what loading does about it: a tiny image, 16-bit
        or float pixels (stretched by the file's own range), a palette, transparency,
        CMYK, 1-bit, or a palette-colour DICOM. A header that cannot be read gives no
        note (decoding reports that).
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".dcm":
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
            notes = _size_note(int(dataset.get("Columns", MIN_SIDE)), int(dataset.get("Rows", MIN_SIDE)))
            if str(dataset.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
                notes.append("palette-colour DICOM: converted to RGB through its colour table")
            return notes
        with Image.open(path) as opened:
            mode, (width, height) = opened.mode, opened.size
    # Header parsers raise many types on bad input; read_image reports the file itself.
    except Exception:  # noqa: BLE001
        return []
    notes = _size_note(width, height)
    if mode not in ("L", "RGB"):
        notes.append(_MODE_NOTES.get(mode, f"unusual pixel mode {mode}: converted to RGB"))
    return notes


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """Bring images to 1 or 3 channels.

    Grey becomes colour by replication; colour becomes grey by luminance
    (:func:`skimage.color.rgb2gray`).

    Parameters
    ----------
    images : np.ndarray
        ``(..., C, H, W)`` with C = 1 or 3: float in ``[0, 1]`` or uint8.
    channels : int
        1 or 3.

    Returns
    -------
    np.ndarray
        ``(..., channels, H, W)`` of the input's dtype; the input itself when it
        already has ``channels`` channels.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if images.ndim < 3 or images.shape[-3] not in (1, 3):
        raise ValueError(f"images must be (..., C, H, W) with C = 1 or 3, got shape {images.shape}")
    if images.shape[-3] == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=-3)
    # rgb2gray reads uint8 as value / 255 and returns float in [0, 1].
    grey = rgb2gray(images, channel_axis=-3)
    if images.dtype == np.uint8:
        grey = np.round(grey * 255.0)
    return np.expand_dims(grey, -3).astype(images.dtype)
