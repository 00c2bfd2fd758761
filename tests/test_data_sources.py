"""Decoding image files, loading each data source, fingerprinting it and splitting it."""

import base64
import json
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, SecondaryCaptureImageStorage, generate_uid
from skimage.color import rgb2gray

from fesf_fed.config import DataConfig
from fesf_fed.data import (
    ImageSet,
    UnreadableImage,
    load_dataset,
    read_image,
    source_fingerprint,
    stratified_split,
    to_channels,
)
from fesf_fed.data.phantom import phantom_dataset
from fesf_fed.data.sources import DEMO_FILE
from fesf_fed.errors import DataError

RNG = np.random.default_rng(0)


def grey_pixels(height: int = 24, width: int = 24) -> np.ndarray:
    return RNG.integers(0, 256, (height, width), dtype=np.uint8)


def colour_pixels(height: int = 24, width: int = 24) -> np.ndarray:
    # A red-to-blue ramp: as far from grey as an image gets.
    ramp = np.linspace(0, 255, width, dtype=np.float64)[np.newaxis].repeat(height, axis=0)
    return np.stack([ramp, np.full_like(ramp, 40), 255 - ramp], axis=-1).astype(np.uint8)


def save(path: Path, pixels: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **attributes) -> Path:
    """An uncompressed (explicit VR little endian) DICOM file, as scanners export them."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.set_pixel_data(pixels, photometric, bits_stored=12 if pixels.dtype == np.uint16 else 8)
    for name, value in attributes.items():
        setattr(dataset, name, value)
    dataset.save_as(path, enforce_file_format=True)
    return path


def truncated(path: Path, pixels: np.ndarray) -> Path:
    save(path, pixels)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def folder_config(root: Path, **fields) -> DataConfig:
    return DataConfig(**{"source": "folder", "path": root, "image_size": 16, **fields})


def make_class_folders(root: Path, per_class: int = 4, classes: tuple[str, ...] = ("b_normal", "a_tumor")) -> Path:
    for name in classes:
        for index in range(per_class):
            save(root / name / f"img{index}.png", grey_pixels())
    return root


# ---------------------------------------------------------------- read_image


def test_grey_png_becomes_one_unit_range_channel_of_the_requested_size(tmp_path: Path) -> None:
    image = read_image(save(tmp_path / "grey.png", np.full((30, 20), 51, dtype=np.uint8)), 16)
    assert image.shape == (1, 16, 16) and image.dtype == np.float32
    np.testing.assert_allclose(image, 51 / 255, atol=1e-6)


def test_aspect_ratio_is_not_kept_the_image_is_stretched_to_a_square(tmp_path: Path) -> None:
    wide = np.zeros((10, 40), dtype=np.uint8)
    wide[:, 20:] = 255
    image = read_image(save(tmp_path / "wide.png", wide), 16)[0]
    # Stretched, not padded or cropped: every row is dark on the left, bright on the right.
    assert np.all(image[:, :6] < 0.1) and np.all(image[:, -6:] > 0.9)


def test_colour_image_keeps_three_channels_in_rgb_order(tmp_path: Path) -> None:
    pixels = colour_pixels()
    image = read_image(save(tmp_path / "colour.bmp", pixels), 24)
    assert image.shape == (3, 24, 24)
    np.testing.assert_allclose(image, pixels.transpose(2, 0, 1) / 255, atol=1 / 255)


def test_rgb_jpeg_of_a_grey_scan_counts_as_grey(tmp_path: Path) -> None:
    grey = np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))
    # A faint tint and JPEG chroma noise, as in Br35H's "3-channel greyscale" files.
    tinted = np.stack([grey, grey, np.clip(grey.astype(int) + 6, 0, 255).astype(np.uint8)], axis=-1)
    assert read_image(save(tmp_path / "scan.jpg", tinted, quality=80), 32).shape == (1, 32, 32)
    assert read_image(save(tmp_path / "photo.jpg", colour_pixels(64, 64), quality=80), 32).shape == (3, 32, 32)


@pytest.mark.parametrize("mode", ["P", "RGBA", "CMYK"])
def test_palette_rgba_and_cmyk_images_become_rgb(tmp_path: Path, mode: str) -> None:
    pixels = colour_pixels()
    converted = Image.fromarray(pixels).convert(mode)
    converted.save(tmp_path / "image.tif")
    expected = np.asarray(converted.convert("RGB")).transpose(2, 0, 1) / 255
    np.testing.assert_allclose(read_image(tmp_path / "image.tif", 24), expected, atol=1 / 255)


@pytest.mark.parametrize("name", ["scan.tif", "scan.png"])
def test_16_bit_images_are_stretched_by_their_own_range(tmp_path: Path, name: str) -> None:
    # 12-bit values in a 16-bit file: dividing by 65535 would leave the image nearly black.
    values = np.tile(np.linspace(1000, 3000, 32), (32, 1)).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / name)
    image = read_image(tmp_path / name, 32)
    assert image.shape == (1, 32, 32)
    assert image.min() == pytest.approx(0.0, abs=1e-3) and image.max() == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(image[0, 0], (values[0] - 1000) / 2000, atol=0.02)


def test_dicom_monochrome1_is_inverted_relative_to_monochrome2(tmp_path: Path) -> None:
    values = np.tile(np.linspace(0, 4095, 32), (32, 1)).astype(np.uint16)
    normal = read_image(write_dicom(tmp_path / "m2.dcm", values), 32)
    inverted = read_image(write_dicom(tmp_path / "m1.dcm", values, "MONOCHROME1"), 32)
    assert normal.shape == (1, 32, 32)
    np.testing.assert_allclose(normal[0, 0], values[0] / 4095, atol=1e-3)
    np.testing.assert_allclose(inverted, 1.0 - normal, atol=1e-5)


def test_dicom_rescale_slope_is_applied(tmp_path: Path) -> None:
    values = np.tile(np.linspace(0, 4095, 32), (32, 1)).astype(np.uint16)
    plain = read_image(write_dicom(tmp_path / "plain.dcm", values), 32)
    # A negative slope turns stored values upside down; ignoring it would not.
    flipped = read_image(write_dicom(tmp_path / "flip.dcm", values, RescaleSlope=-1, RescaleIntercept=0), 32)
    np.testing.assert_allclose(flipped, 1.0 - plain, atol=1e-5)


def test_multi_frame_dicom_is_refused(tmp_path: Path) -> None:
    frames = np.zeros((2, 16, 16), dtype=np.uint16)
    with pytest.raises(UnreadableImage, match="multi-frame DICOM"):
        read_image(write_dicom(tmp_path / "volume.dcm", frames), 16)


def test_compressed_dicom_without_a_decoder_names_its_transfer_syntax(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "j2k.dcm", np.zeros((16, 16), dtype=np.uint16))
    dataset = pydicom.dcmread(path)
    dataset.file_meta.TransferSyntaxUID = JPEG2000Lossless
    dataset.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 60])
    dataset.save_as(path, enforce_file_format=True)
    with pytest.raises(UnreadableImage, match="transfer syntax JPEG 2000"):
        read_image(path, 16)


def _corrupt_files(folder: Path) -> dict[str, Path]:
    text = folder / "notes.png"
    text.write_text("this is not an image")
    empty = folder / "empty.jpg"
    empty.write_bytes(b"")
    notes = folder / "notes.txt"
    notes.write_text("scan notes")
    fake_dicom = folder / "fake.dcm"
    fake_dicom.write_text("not dicom either")
    pages = [Image.fromarray(grey_pixels()) for _ in range(2)]
    pages[0].save(folder / "stack.tif", save_all=True, append_images=pages[1:])
    return {
        "truncated PNG": truncated(folder / "cut.png", grey_pixels(64, 64)),
        "truncated JPEG": truncated(folder / "cut.jpg", colour_pixels(64, 64)),
        "zero-byte JPEG": empty,
        "text named .png": text,
        "text file": notes,
        "text named .dcm": fake_dicom,
        "multi-page TIFF": folder / "stack.tif",
    }


@pytest.mark.parametrize(
    "kind, reason",
    [
        ("truncated PNG", "cannot decode"),
        ("truncated JPEG", "cannot decode"),
        ("zero-byte JPEG", "empty file"),
        ("text named .png", "not a recognised image format"),
        ("text file", r"not an image file \(\.txt\)"),
        ("text named .dcm", "not a DICOM file"),
        ("multi-page TIFF", "2 frames"),
    ],
)
def test_unreadable_files_raise_a_data_error_naming_the_file(tmp_path: Path, kind: str, reason: str) -> None:
    path = _corrupt_files(tmp_path)[kind]
    with pytest.raises(DataError, match=reason) as caught:
        read_image(path, 16)
    assert str(caught.value).startswith(f"{path}: ")
    assert "\n" not in str(caught.value)


def test_read_image_rejects_a_non_positive_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="size"):
        read_image(save(tmp_path / "a.png", grey_pixels()), 0)


# ---------------------------------------------------------------- to_channels


def test_to_channels_replicates_grey_and_takes_luminance_of_colour() -> None:
    grey = RNG.random((2, 1, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(to_channels(grey, 3), np.repeat(grey, 3, axis=1))
    colour = RNG.random((2, 3, 5, 5)).astype(np.float32)
    luminance = to_channels(colour, 1)
    assert luminance.shape == (2, 1, 5, 5) and luminance.dtype == np.float32
    np.testing.assert_allclose(luminance[:, 0], rgb2gray(colour.transpose(0, 2, 3, 1)), atol=1e-6)
    assert to_channels(colour, 3) is colour


def test_to_channels_keeps_uint8() -> None:
    colour = np.full((3, 4, 4), 200, dtype=np.uint8)
    grey = to_channels(colour, 1)
    assert grey.dtype == np.uint8 and np.all(grey == 200)
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        to_channels(colour, 2)


# ---------------------------------------------------------------- folder source


def test_folder_source_classes_labels_and_posix_ids(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data", per_class=2)
    save(root / "a_tumor" / "nested" / "deep.png", grey_pixels())
    save(root / "a_tumor" / ".hidden.png", grey_pixels())
    (root / ".cache").mkdir()
    data = load_dataset(folder_config(root))
    assert isinstance(data, ImageSet)
    assert data.classes == ["a_tumor", "b_normal"]
    assert data.ids == [
        "a_tumor/img0.png",
        "a_tumor/img1.png",
        "a_tumor/nested/deep.png",
        "b_normal/img0.png",
        "b_normal/img1.png",
    ]
    assert data.labels.tolist() == [0, 0, 0, 1, 1] and data.labels.dtype == np.int64
    assert data.images.shape == (5, 1, 16, 16) and data.images.dtype == np.uint8
    assert data.skipped == []


def test_folder_source_skips_bad_files_with_their_reason(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data", per_class=2)
    _corrupt_files(root / "a_tumor")
    save(root / "stray.png", grey_pixels())
    data = load_dataset(folder_config(root))
    assert data.class_counts() == {"a_tumor": 2, "b_normal": 2}
    reasons = {skipped.path: skipped.reason for skipped in data.skipped}
    assert set(reasons) == {
        "a_tumor/cut.png",
        "a_tumor/cut.jpg",
        "a_tumor/empty.jpg",
        "a_tumor/notes.png",
        "a_tumor/notes.txt",
        "a_tumor/fake.dcm",
        "a_tumor/stack.tif",
        "stray.png",
    }
    assert reasons["a_tumor/notes.txt"].startswith("not an image file (.txt)")
    assert reasons["a_tumor/empty.jpg"].startswith("empty file (0 bytes)")
    assert "class sub-folder" in reasons["stray.png"]


def test_folder_with_a_dicom_class_loads(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for name in ("ct_a", "ct_b"):
        (root / name).mkdir(parents=True)
        write_dicom(root / name / "slice.dcm", RNG.integers(0, 4096, (20, 20)).astype(np.uint16))
    data = load_dataset(folder_config(root))
    assert data.images.shape == (2, 1, 16, 16)


@pytest.mark.parametrize(
    "channels, grey_only, expected",
    [("auto", True, 1), ("auto", False, 3), (1, False, 1), (3, True, 3)],
)
def test_channels_setting(tmp_path: Path, channels, grey_only: bool, expected: int) -> None:
    root = make_class_folders(tmp_path / "data", per_class=2)
    if not grey_only:
        save(root / "a_tumor" / "colour.png", colour_pixels())
    data = load_dataset(folder_config(root, channels=channels))
    assert data.images.shape[1] == expected


def test_grey_images_in_a_colour_set_are_replicated(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data", per_class=1)
    save(root / "a_tumor" / "colour.png", colour_pixels())
    data = load_dataset(folder_config(root))
    grey = data.images[data.ids.index("b_normal/img0.png")]
    assert np.array_equal(grey[0], grey[1]) and np.array_equal(grey[0], grey[2])


def test_a_class_without_usable_images_is_an_error_naming_it(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data", per_class=2, classes=("good",))
    truncated(root / "broken" / "cut.png", grey_pixels(64, 64))
    with pytest.raises(DataError, match=r"class 'broken' has no usable image") as caught:
        load_dataset(folder_config(root))
    assert str(root) in str(caught.value)


def test_a_dataset_without_usable_images_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "empty_a").mkdir(parents=True)
    (root / "empty_b").mkdir()
    with pytest.raises(DataError, match="no usable image"):
        load_dataset(folder_config(root))
    flat = tmp_path / "flat"
    save(flat / "loose.png", grey_pixels())
    with pytest.raises(DataError, match=f"{flat}: no class sub-folders"):
        load_dataset(folder_config(flat))


def test_a_missing_path_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for source in ("folder", "csv", "medmnist"):
        config = DataConfig(source=source, path=missing)
        with pytest.raises(DataError, match=f"{missing}: data path not found"):
            load_dataset(config)
        with pytest.raises(DataError, match="data path not found"):
            source_fingerprint(config)


def test_max_per_class_takes_a_seeded_sample_in_id_order(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data", per_class=8)
    first = load_dataset(folder_config(root, max_per_class=3, seed=1))
    again = load_dataset(folder_config(root, max_per_class=3, seed=1))
    other = load_dataset(folder_config(root, max_per_class=3, seed=2))
    assert first.class_counts() == {"a_tumor": 3, "b_normal": 3}
    assert first.ids == again.ids and np.array_equal(first.images, again.images)
    assert first.ids == sorted(first.ids)
    assert other.ids != first.ids


def test_max_per_class_replaces_unreadable_files_from_the_same_class(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data", per_class=3)
    truncated(root / "a_tumor" / "cut.png", grey_pixels(64, 64))
    for seed in range(6):
        data = load_dataset(folder_config(root, max_per_class=3, seed=seed))
        assert data.class_counts() == {"a_tumor": 3, "b_normal": 3}


# ---------------------------------------------------------------- medmnist source


def write_npz(path: Path, colour: bool = False, drop: str | None = None) -> Path:
    shape = (28, 28, 3) if colour else (28, 28)
    arrays = {}
    for split, count in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = RNG.integers(0, 256, (count, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 3).reshape(-1, 1).astype(np.uint8)
    if drop is not None:
        arrays.pop(drop, None)
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub: a **dict's keys could be allow_pickle
    return path


def test_medmnist_pools_every_split(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "tiny.npz")
    data = load_dataset(DataConfig(source="medmnist", path=path, image_size=28))
    assert len(data) == 11 and data.classes == ["0", "1", "2"]
    assert data.ids[:2] == ["train/0", "train/1"] and "val/1" in data.ids and data.ids[-1] == "test/2"
    with np.load(path) as arrays:
        np.testing.assert_array_equal(data.images[data.ids.index("val/1"), 0], arrays["val_images"][1])
        assert data.labels[data.ids.index("test/2")] == arrays["test_labels"][2, 0]


def test_medmnist_colour_and_resize(tmp_path: Path) -> None:
    data = load_dataset(DataConfig(source="medmnist", path=write_npz(tmp_path / "rgb.npz", colour=True), image_size=40))
    assert data.images.shape == (11, 3, 40, 40)


def test_medmnist_sample_per_class(tmp_path: Path) -> None:
    config = DataConfig(source="medmnist", path=write_npz(tmp_path / "tiny.npz"), image_size=28, max_per_class=2)
    assert load_dataset(config).class_counts() == {"0": 2, "1": 2, "2": 2}


def test_medmnist_missing_key_names_file_and_keys(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "broken.npz", drop="val_labels")
    with pytest.raises(DataError, match=r"broken\.npz: missing array\(s\) val_labels; .*train_images"):
        load_dataset(DataConfig(source="medmnist", path=path))


def test_medmnist_file_that_is_not_an_npz_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "fake.npz"
    path.write_text("not a zip")
    with pytest.raises(DataError, match=r"fake\.npz: not a readable \.npz"):
        load_dataset(DataConfig(source="medmnist", path=path))


# ---------------------------------------------------------------- csv source


def test_csv_manifest_reads_relative_and_absolute_paths(tmp_path: Path) -> None:
    save(tmp_path / "imgs" / "a.png", grey_pixels())
    save(tmp_path / "imgs" / "b.png", grey_pixels())
    elsewhere = save(tmp_path / "other" / "c.png", grey_pixels())
    manifest = tmp_path / "imgs" / "manifest.csv"
    manifest.write_text(f"patient,path,label\n1,a.png,sick\n2,b.png,healthy\n3,{elsewhere},sick\n4,gone.png,sick\n")
    data = load_dataset(DataConfig(source="csv", path=manifest, image_size=16))
    assert data.classes == ["healthy", "sick"]
    assert data.ids == ["a.png", "b.png", elsewhere.as_posix()]
    assert data.labels.tolist() == [1, 0, 1]
    assert [(s.path, s.reason.split(";")[0]) for s in data.skipped] == [("gone.png", "file not found")]


def test_csv_missing_column_names_the_csv_and_the_columns(tmp_path: Path) -> None:
    manifest = tmp_path / "list.csv"
    manifest.write_text("file,diagnosis\na.png,sick\n")
    with pytest.raises(DataError, match=r"list\.csv: missing column\(s\) path, label; .*path,label"):
        load_dataset(DataConfig(source="csv", path=manifest))


def test_csv_class_whose_files_are_all_missing_is_an_error(tmp_path: Path) -> None:
    save(tmp_path / "a.png", grey_pixels())
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,label\na.png,sick\nmissing.png,healthy\n")
    with pytest.raises(DataError, match=r"list\.csv: class 'healthy' has no usable image"):
        load_dataset(DataConfig(source="csv", path=manifest))


# ---------------------------------------------------------------- phantom source


def test_phantom_source_is_the_phantom_dataset() -> None:
    data = load_dataset(DataConfig(source="phantom", image_size=16, phantom_per_class=3, seed=4))
    expected = phantom_dataset(3, 16, 4)
    np.testing.assert_array_equal(data.images, expected.images)
    assert data.ids == expected.ids and data.classes == expected.classes
    colour = load_dataset(DataConfig(source="phantom", image_size=16, phantom_per_class=3, channels=3))
    assert colour.images.shape[1] == 3


# ---------------------------------------------------------------- demo source


def test_demo_source_is_the_shipped_balanced_chest_xray_subset() -> None:
    data = load_dataset(DataConfig(source="demo", image_size=32))
    assert data.classes == ["normal", "pneumonia"]
    assert data.images.shape == (1600, 1, 32, 32) and data.images.dtype == np.uint8
    assert np.bincount(data.labels).tolist() == [800, 800]
    assert data.skipped == []
    # CC BY 4.0: the licence and the attribution travel with the data.
    record = json.loads(DEMO_FILE.read_text())
    assert record["licence"].startswith("CC BY 4.0") and "MedMNIST v2" in record["attribution"]
    assert DEMO_FILE.stat().st_size <= 2_000_000


def test_a_damaged_demo_set_is_refused_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    record = json.loads(DEMO_FILE.read_text())
    pixels = bytearray(zlib.decompress(base64.b64decode(record["pixels"])))
    pixels[0] ^= 0xFF  # one flipped pixel: still decodes, but no longer what was shipped
    record["pixels"] = base64.b64encode(zlib.compress(bytes(pixels))).decode()
    damaged = tmp_path / "pneumoniamnist-demo.json"
    damaged.write_text(json.dumps(record))
    monkeypatch.setattr("fesf_fed.data.sources.DEMO_FILE", damaged)
    with pytest.raises(DataError, match=r"pneumoniamnist-demo.json: the demo set is missing or damaged; restore it"):
        load_dataset(DataConfig(source="demo", image_size=16))
    damaged.write_text("{not json")
    with pytest.raises(DataError, match="missing or damaged"):
        load_dataset(DataConfig(source="demo", image_size=16))


# ---------------------------------------------------------------- fingerprint


def test_fingerprint_is_stable_and_independent_of_where_the_data_lives(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data")
    digest = source_fingerprint(folder_config(root))
    assert len(digest) == 64 and digest == source_fingerprint(folder_config(root))
    moved = shutil.copytree(root, tmp_path / "moved")
    assert source_fingerprint(folder_config(moved)) == digest
    assert source_fingerprint(folder_config(root, test_fraction=0.2)) == digest
    assert source_fingerprint(folder_config(root, image_size=32)) != digest


def test_fingerprint_changes_when_a_file_is_edited_added_or_removed(tmp_path: Path) -> None:
    root = make_class_folders(tmp_path / "data")
    digests = [source_fingerprint(folder_config(root))]
    target = root / "a_tumor" / "img0.png"
    stat = target.stat()
    save(target, grey_pixels())
    # Same size and modification time: only the bytes tell the edit apart.
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    digests.append(source_fingerprint(folder_config(root)))
    save(root / "b_normal" / "new.png", grey_pixels())
    digests.append(source_fingerprint(folder_config(root)))
    (root / "a_tumor" / "img1.png").unlink()
    digests.append(source_fingerprint(folder_config(root)))
    assert len(set(digests)) == 4


def test_fingerprint_of_csv_and_npz_follows_their_files(tmp_path: Path) -> None:
    image = save(tmp_path / "a.png", grey_pixels())
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,label\na.png,x\n")
    csv_config = DataConfig(source="csv", path=manifest)
    before = source_fingerprint(csv_config)
    save(image, grey_pixels())
    assert source_fingerprint(csv_config) != before
    npz_config = DataConfig(source="medmnist", path=write_npz(tmp_path / "tiny.npz"))
    before = source_fingerprint(npz_config)
    write_npz(tmp_path / "tiny.npz")
    assert source_fingerprint(npz_config) != before


def test_fingerprint_hashes_bytes_without_decoding(tmp_path: Path) -> None:
    # Random bytes named .png: decoding would fail, hashing must not care.
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for index in range(3):
            (tmp_path / "data" / name / f"{index}.png").write_bytes(os.urandom(1000))
    first = source_fingerprint(folder_config(tmp_path / "data"))
    (tmp_path / "data" / "a" / "0.png").write_bytes(os.urandom(1000))
    assert source_fingerprint(folder_config(tmp_path / "data")) != first


# ---------------------------------------------------------------- stratified_split


def test_split_is_stratified_disjoint_and_complete() -> None:
    labels = np.array([0] * 10 + [1] * 5 + [2] * 2 + [3] * 1)
    train, test = stratified_split(labels, 0.4, seed=0)
    assert train.dtype == np.int64 and test.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    assert not set(train) & set(test) and sorted({*train, *test}) == list(range(len(labels)))
    assert np.bincount(labels[test], minlength=4).tolist() == [4, 2, 1, 0]
    # A lone image stays in training; two images give one to each side.
    assert np.bincount(labels[train], minlength=4).tolist() == [6, 3, 1, 1]


def test_split_keeps_one_image_on_each_side_at_extreme_fractions() -> None:
    labels = np.array([0] * 3 + [1] * 3)
    for fraction in (0.01, 0.99):
        train, test = stratified_split(labels, fraction, seed=0)
        assert np.bincount(labels[train]).min() >= 1 and np.bincount(labels[test]).min() >= 1


def test_split_is_deterministic_per_seed() -> None:
    labels = np.repeat(np.arange(3), 20)
    first = stratified_split(labels, 0.4, seed=7)
    again = stratified_split(labels, 0.4, seed=7)
    other = stratified_split(labels, 0.4, seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize(
    "labels, fraction, seed, message",
    [
        (np.zeros((2, 2), dtype=int), 0.4, 0, "labels"),
        (np.array([0.5, 1.0]), 0.4, 0, "labels"),
        (np.array([0, 1]), 0.0, 0, "test_fraction"),
        (np.array([0, 1]), 1.0, 0, "test_fraction"),
        (np.array([0, 1]), 0.4, -1, "seed"),
    ],
)
def test_split_validates_its_arguments(labels, fraction, seed, message) -> None:
    with pytest.raises(ValueError, match=message):
        stratified_split(labels, fraction, seed)
