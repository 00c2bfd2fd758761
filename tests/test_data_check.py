"""`fesf data check` reports every problem of a data folder at once; loading refuses unusable data in one line.

Also the file-system oddities a folder source meets: names that are not UTF-8, symbolic
link loops, broken links, links to folders, and file names that look like markup.
"""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fesf_fed.config import DataConfig
from fesf_fed.data import check_source, load_dataset, source_fingerprint
from fesf_fed.data.decode import image_notes
from fesf_fed.errors import DataError
from tests.conftest import CommandResult

RNG = np.random.default_rng(7)
NOT_UTF8 = "file name is not valid UTF-8; rename it"


def save(path: Path, pixels: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (20, 20), dtype=np.uint8) if pixels is None else pixels).save(path)
    return path


def classes(root: Path, names: tuple[str, ...] = ("benign", "malignant"), per_class: int = 3) -> Path:
    for name in names:
        for index in range(per_class):
            save(root / name / f"{index}.png")
    return root


def not_utf8(name: bytes) -> str:
    """A file name holding bytes that are not UTF-8, as Python reads it from a Linux file system."""
    return os.fsdecode(name)


def make_not_utf8(path: Path) -> Path:
    try:
        return save(path)
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses file names that are not UTF-8")


def one_error_line(result: CommandResult) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    return result.stderr


def config(root: Path) -> DataConfig:
    return DataConfig(source="folder", path=root, image_size=16)


# ------------------------------------------------------------ names that are not UTF-8


def test_a_file_name_that_is_not_utf8_is_skipped_with_its_reason_by_load_fingerprint_and_check(
    tmp_path: Path, fesf_main
) -> None:
    root = classes(tmp_path / "data")
    clean = source_fingerprint(config(root))
    make_not_utf8(root / "benign" / not_utf8(b"bad-\xff.png"))
    # The fingerprint hashed the raw name with str.encode() and crashed (UnicodeEncodeError).
    fingerprint = source_fingerprint(config(root))
    assert len(fingerprint) == 64 and fingerprint != clean
    data = load_dataset(config(root))
    assert len(data) == 6 and all(image_id.encode() for image_id in data.ids)
    assert [(skipped.path, skipped.reason) for skipped in data.skipped] == [("benign/bad-\\xff.png", NOT_UTF8)]
    result = fesf_main("data", "check", str(root))
    assert result.returncode == 0, result.stderr
    assert "6 usable images" in result.stdout
    assert "benign/bad-\\xff.png" in result.stdout and NOT_UTF8 in result.stdout


def test_a_class_folder_name_that_is_not_utf8_is_named_printably_and_leaves_its_class_empty(
    tmp_path: Path, fesf_main
) -> None:
    root = classes(tmp_path / "data")
    make_not_utf8(root / not_utf8(b"tumo\xe9r") / "0.png")
    assert len(source_fingerprint(config(root))) == 64
    with pytest.raises(DataError, match=r"class 'tumo\\\\xe9r' has no usable image") as caught:
        load_dataset(config(root))
    assert "\n" not in str(caught.value)
    result = fesf_main("data", "check", str(root))
    assert "class 'tumo\\\\xe9r' has no usable image" in one_error_line(result)
    assert "tumo\\xe9r/" in result.stdout and "folder name is not valid UTF-8; rename it" in result.stdout


# ------------------------------------------------------------ symbolic links


def test_link_loops_broken_links_and_linked_folders_are_skipped_with_their_reason(tmp_path: Path) -> None:
    root = classes(tmp_path / "data")
    outside = classes(tmp_path / "elsewhere", names=("scans",))
    os.symlink("loop", root / "loop")
    os.symlink("self", root / "benign" / "self")
    os.symlink("..", root / "benign" / "up")
    os.symlink(root, root / "malignant" / "root")
    os.symlink(tmp_path / "missing.png", root / "malignant" / "dangling.png")
    os.symlink(outside / "scans", root / "malignant" / "scans")
    os.symlink(root, root / "again")
    # A link to an image is read like the image.
    os.symlink(outside / "scans" / "0.png", root / "malignant" / "linked.png")
    data = load_dataset(config(root))
    assert data.classes == ["benign", "malignant"]
    assert data.class_counts() == {"benign": 3, "malignant": 4} and "malignant/linked.png" in data.ids
    reasons = {skipped.path: skipped.reason for skipped in data.skipped}
    assert set(reasons) == {
        "loop",
        "again",
        "benign/self",
        "benign/up",
        "malignant/root",
        "malignant/dangling.png",
        "malignant/scans",
    }
    for loop in ("loop", "again", "benign/self", "benign/up", "malignant/root"):
        assert reasons[loop].startswith("symbolic link loop"), loop
    assert reasons["malignant/dangling.png"].startswith("broken symbolic link")
    assert reasons["malignant/scans"].startswith("symbolic link to a folder: not followed")
    assert check_source(config(root)).skipped == data.skipped
    assert len(source_fingerprint(config(root))) == 64


# ------------------------------------------------------------ one report, then the verdict


def problem_folder(root: Path) -> Path:
    """Two usable classes, an empty one, a corrupt file, a link loop, a 1x1 image and a 16-bit TIFF."""
    classes(root)
    (root / "empty").mkdir()
    (root / "benign" / "broken.png").write_bytes(b"\x89PNG not really")
    os.symlink("loop.png", root / "benign" / "loop.png")
    save(root / "malignant" / "tiny.png", np.zeros((1, 1), np.uint8))
    save(root / "malignant" / "deep.tif", RNG.integers(0, 65536, (20, 20)).astype(np.uint16))
    return root


def test_data_check_lists_every_problem_in_one_report_then_exits_2(tmp_path: Path, fesf_main) -> None:
    root = problem_folder(tmp_path / "data")
    result = fesf_main("data", "check", str(root))
    error = one_error_line(result)
    assert f"{root}: class 'empty' has no usable image" in error
    report = result.stdout
    assert "8 usable images, 1 channel(s)" in report
    assert "empty" in report and "0: no usable image" in report
    assert "Bad or skipped files (2)" in report
    assert "benign/broken.png" in report and "not a recognised image format" in report
    assert "benign/loop.png" in report and "symbolic link loop" in report
    assert "Warnings (2)" in report
    assert "malignant/tiny.png" in report and "tiny image (1x1 px)" in report
    assert "malignant/deep.tif" in report and "16-bit image" in report
    # The near-duplicate report still runs on the usable images.
    assert "no near-duplicates" in report


def test_data_check_of_a_folder_without_any_usable_image_reports_its_files_then_exits_2(
    tmp_path: Path, fesf_main
) -> None:
    root = tmp_path / "data"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        (root / name / "cut.png").write_bytes(b"\x89PNG")
    result = fesf_main("data", "check", str(root))
    assert "no usable image (2 file(s) skipped)" in one_error_line(result)
    assert "0 usable images" in result.stdout and "a/cut.png" in result.stdout and "b/cut.png" in result.stdout


def test_data_check_warns_about_tiny_and_unusual_images_but_exits_0(tmp_path: Path, fesf_main) -> None:
    root = classes(tmp_path / "data")
    save(root / "benign" / "tiny.png", np.full((1, 1), 128, np.uint8))
    save(root / "benign" / "deep.tif", RNG.integers(0, 65536, (20, 20)).astype(np.uint16))
    Image.fromarray(RNG.integers(0, 256, (20, 20), dtype=np.uint8)).convert("P").save(root / "malignant" / "p.png")
    result = fesf_main("data", "check", str(root))
    assert result.returncode == 0, result.stderr
    assert "9 usable images" in result.stdout and "no bad files" in result.stdout
    assert "Warnings (3)" in result.stdout
    for text in ("benign/tiny.png", "tiny image (1x1 px)", "benign/deep.tif", "16-bit image", "palette image"):
        assert text in result.stdout
    clean = fesf_main("data", "check", str(classes(tmp_path / "clean")))
    assert clean.returncode == 0 and "no warnings" in clean.stdout


def test_file_names_are_printed_as_they_are_not_read_as_markup(tmp_path: Path, fesf_main) -> None:
    root = classes(tmp_path / "data")
    (root / "benign" / "[bold]cut.png").write_bytes(b"\x89PNG")
    result = fesf_main("data", "check", str(root))
    assert result.returncode == 0, result.stderr
    assert "benign/[bold]cut.png" in result.stdout


# ------------------------------------------------------------ loading agrees with the check


def test_loading_refuses_unusable_data_in_one_line_as_the_check_says(tmp_path: Path) -> None:
    root = problem_folder(tmp_path / "data")
    with pytest.raises(DataError) as caught:
        load_dataset(config(root))
    message = str(caught.value)
    assert message == f"{root}: class 'empty' has no usable image; add images of that class or remove it"
    assert check_source(config(root)).problem == message.removeprefix(f"{root}: ")
    (root / "void").mkdir()
    with pytest.raises(DataError, match=r"classes 'empty', 'void' have no usable image; add images of those"):
        load_dataset(config(root))
    (root / "empty").rmdir()
    (root / "void").rmdir()
    usable = check_source(config(root))
    assert usable.problem is None and usable.counts == {"benign": 3, "malignant": 5}
    assert usable.data is not None and usable.data.ids == load_dataset(config(root)).ids


# ------------------------------------------------------------ image_notes


@pytest.mark.parametrize(
    "mode, dtype, note",
    [
        ("L", np.uint8, None),
        ("RGB", np.uint8, None),
        ("I;16", np.uint16, "16-bit image"),
        ("P", np.uint8, "palette image"),
        ("RGBA", np.uint8, "transparency dropped"),
        ("1", np.uint8, "1-bit"),
        ("F", np.float32, "floating-point image"),
    ],
)
def test_image_notes_name_unusual_formats(tmp_path: Path, mode: str, dtype: type, note: str | None) -> None:
    shape = (20, 20, 3) if mode in ("RGB", "RGBA") else (20, 20)
    image = Image.fromarray(RNG.integers(0, 200, shape).astype(dtype))
    if image.mode != mode:
        image = image.convert(mode)
    path = tmp_path / ("image.tif" if mode == "F" else "image.png")
    image.save(path)
    notes = image_notes(path)
    assert notes == [] if note is None else (len(notes) == 1 and note in notes[0])


def test_image_notes_flag_images_under_8_px_a_side_and_say_nothing_of_unreadable_files(tmp_path: Path) -> None:
    assert image_notes(save(tmp_path / "thin.png", np.zeros((40, 7), np.uint8)))[0].startswith("tiny image (7x40 px)")
    assert image_notes(save(tmp_path / "small.png", np.zeros((8, 8), np.uint8))) == []
    (tmp_path / "cut.png").write_bytes(b"\x89PNG")
    assert image_notes(tmp_path / "cut.png") == []


def test_a_data_path_that_is_a_symbolic_link_loop_is_one_line(tmp_path: Path, fesf_main) -> None:
    loop = tmp_path / "scans"
    os.symlink(loop, loop)
    result = fesf_main("data", "check", str(loop))
    assert result.returncode == 2
    assert (
        result.stderr == f"error: {loop}: a symbolic link loop; remove the link or point it at a real file or folder\n"
    )


def test_a_class_folder_linked_to_another_class_is_left_empty_with_its_reason(tmp_path: Path, fesf_main) -> None:
    root = tmp_path / "data"
    for name in ("lesion", "normal"):
        for index in range(3):
            save(root / name / f"{index}.png")
    os.symlink(root / "lesion", root / "also-lesion")
    result = fesf_main("data", "check", str(root))
    assert result.returncode == 2
    assert "also-lesion/" in result.stdout and "a link to class folder 'lesion'" in result.stdout
    assert result.stderr.startswith("error: ") and "class 'also-lesion' has no usable image" in result.stderr
