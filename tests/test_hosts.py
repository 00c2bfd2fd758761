"""Host banks from folders and phantoms, the site key, and the keyed host assignment."""

import hashlib
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fesf_fed.data.phantom import phantom_hosts
from fesf_fed.errors import DataError
from fesf_fed.hosts import (
    assign_hosts,
    folder_bank_fingerprint,
    key_fingerprint,
    load_host_bank,
    load_site_key,
    phantom_bank_fingerprint,
    phantom_bank_seed,
    phantom_host_bank,
)


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def bank_folder(tmp_path: Path) -> Path:
    """A grey PNG, a colour PNG in a subfolder, and files a bank must ignore."""
    # A hidden parent folder (like ~/.fesf) must not hide the bank itself.
    folder = tmp_path / ".fesf" / "hosts"
    ramp = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1))
    _save(folder / "a_grey.png", ramp)
    colour = np.zeros((32, 32, 3), dtype=np.uint8)
    colour[..., 0] = 200
    colour[..., 2] = ramp
    _save(folder / "sub" / "b_colour.png", colour)
    _save(folder / ".hidden.png", ramp)
    _save(folder / ".git" / "c.png", ramp)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_bank_reads_supported_images_recursively_in_sorted_order(bank_folder: Path) -> None:
    bank = load_host_bank(bank_folder, 16, channels=1)
    assert bank.ids == ["a_grey.png", "sub/b_colour.png"]
    assert bank.images.shape == (2, 1, 16, 16) and bank.images.dtype == np.uint8
    assert len(bank) == 2 and bank.skipped == []
    # The grey ramp survives decoding: dark on the left, bright on the right.
    assert bank.images[0, 0, :, 0].mean() < 30 and bank.images[0, 0, :, -1].mean() > 225


def test_bank_converts_hosts_to_the_sites_channel_count(bank_folder: Path) -> None:
    colour = load_host_bank(bank_folder, 16, channels=3)
    assert colour.images.shape == (2, 3, 16, 16)
    grey_as_colour = colour.images[0]
    assert all(np.array_equal(grey_as_colour[0], channel) for channel in grey_as_colour[1:])
    red, green = colour.images[1, 0], colour.images[1, 1]
    assert red.mean() > 190 and green.mean() < 10


def test_a_corrupt_file_is_skipped_and_listed(bank_folder: Path) -> None:
    (bank_folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    bank = load_host_bank(bank_folder, 16, channels=1)
    assert bank.ids == ["a_grey.png", "sub/b_colour.png"]
    assert [Path(skipped.path).name for skipped in bank.skipped] == ["broken.png"]
    assert "corrupt" in bank.skipped[0].reason


def test_unusable_entries_are_skipped_and_listed_not_fingerprinted(bank_folder: Path) -> None:
    before = folder_bank_fingerprint(bank_folder)
    ramp = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (32, 1))
    # A name that is not valid UTF-8 reads back with a surrogate escape: ids are text, so it is skipped.
    _save(bank_folder / os.fsdecode(b"host-\xff.png"), ramp)
    (bank_folder / "gone.png").symlink_to(bank_folder / "missing.png")
    assert folder_bank_fingerprint(bank_folder) == before
    bank = load_host_bank(bank_folder, 16, channels=1)
    assert bank.ids == ["a_grey.png", "sub/b_colour.png"]
    assert [(skipped.path, skipped.reason.split(";")[0]) for skipped in bank.skipped] == [
        ("gone.png", "broken symbolic link (its target does not exist)"),
        ("host-\\xff.png", "file name is not valid UTF-8"),
    ]
    assert bank.skipped[1].reason == "file name is not valid UTF-8; rename it"


def test_a_folder_of_only_unusable_files_names_the_first(tmp_path: Path) -> None:
    _save(tmp_path / os.fsdecode(b"host-\xff.png"), np.zeros((16, 16), dtype=np.uint8))
    message = r"none of its 1 image file\(s\) can be used; the first, host-\\xff.png: file name is not"
    for read in (lambda: folder_bank_fingerprint(tmp_path), lambda: load_host_bank(tmp_path, 16, channels=1)):
        with pytest.raises(DataError, match=message):
            read()


def test_a_missing_folder_is_an_error_that_says_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "no-hosts"
    with pytest.raises(DataError, match=r"no-hosts: host bank folder not found; create it and put non-patient"):
        load_host_bank(missing, 16, channels=1)


def test_a_folder_without_usable_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hosts go here")
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}: no host image files; put non-patient images")):
        load_host_bank(tmp_path, 16, channels=1)
    (tmp_path / "broken.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"none of its 1 image file\(s\) can be used; the first, "):
        load_host_bank(tmp_path, 16, channels=1)


def test_fingerprint_follows_the_files_without_decoding_them(bank_folder: Path) -> None:
    first = folder_bank_fingerprint(bank_folder)
    assert folder_bank_fingerprint(bank_folder) == first
    (bank_folder / "not-an-image.png").write_bytes(b"hashed, never decoded")
    with_extra = folder_bank_fingerprint(bank_folder)
    (bank_folder / "not-an-image.png").unlink()
    changed = np.full((32, 32), 77, dtype=np.uint8)
    _save(bank_folder / "a_grey.png", changed)
    edited = folder_bank_fingerprint(bank_folder)
    (bank_folder / "a_grey.png").rename(bank_folder / "z_grey.png")
    assert load_host_bank(bank_folder, 16, channels=1).ids == ["sub/b_colour.png", "z_grey.png"]
    assert len({first, with_extra, edited, folder_bank_fingerprint(bank_folder)}) == 4


def test_phantom_bank_wraps_the_generated_hosts() -> None:
    bank = phantom_host_bank(3, 24, seed=1)
    assert bank.ids == ["phantom-host/000", "phantom-host/001", "phantom-host/002"]
    assert np.array_equal(bank.images, phantom_hosts(3, 24, seed=1))
    assert bank.skipped == []
    assert phantom_bank_fingerprint(3, 24, 1) == phantom_bank_fingerprint(3, 24, 1)
    assert (
        len(
            {phantom_bank_fingerprint(3, 24, 1), phantom_bank_fingerprint(3, 24, 2), phantom_bank_fingerprint(4, 24, 1)}
        )
        == 3
    )


def test_site_key_is_created_once_private_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FESF_HOME", str(tmp_path / "home"))
    key = load_site_key(None, "A")
    key_file = tmp_path / "home" / "secrets" / "A.key"
    assert len(key) == 32 and key_file.read_bytes() == key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_site_key(None, "A") == key
    assert load_site_key(key_file, "ignored") == key
    assert load_site_key(None, "B") != key
    # Temporary files are renamed into place or removed, never left behind.
    assert sorted(path.name for path in key_file.parent.iterdir()) == ["A.key", "B.key"]


def test_site_key_at_an_explicit_path_creates_its_folder(tmp_path: Path) -> None:
    key_file = tmp_path / "deep" / "er" / "site.key"
    key = load_site_key(key_file, "A")
    assert key_file.read_bytes() == key and len(key) == 32


@pytest.mark.parametrize("content", [b"", b"fifteen bytes!!"])
def test_a_short_site_key_is_refused(tmp_path: Path, content: bytes) -> None:
    key_file = tmp_path / "short.key"
    key_file.write_bytes(content)
    with pytest.raises(DataError, match=rf"short\.key: site key has {len(content)} bytes, at least 16"):
        load_site_key(key_file, "A")
    assert key_file.read_bytes() == content


def test_a_site_name_cannot_escape_the_secrets_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FESF_HOME", str(tmp_path))
    with pytest.raises(ValueError, match="site must be a plain name"):
        load_site_key(None, "../A")


def _ids(count: int) -> list[str]:
    return [f"tumor/scan_{index:05d}.png" for index in range(count)]


def test_assignment_is_deterministic_in_range_and_per_id() -> None:
    ids = _ids(50)
    hosts = assign_hosts(ids, 7, b"k" * 32)
    assert hosts.dtype == np.int64 and hosts.shape == (50,)
    assert hosts.min() >= 0 and hosts.max() < 7
    assert np.array_equal(hosts, assign_hosts(ids, 7, b"k" * 32))
    # An image's host does not depend on which other images are converted with it.
    assert np.array_equal(assign_hosts(ids[::-1], 7, b"k" * 32), hosts[::-1])
    assert np.array_equal(assign_hosts(ids, 1, b"k" * 32), np.zeros(50))


def test_assignment_changes_with_the_key() -> None:
    ids = _ids(200)
    first = assign_hosts(ids, 8, b"a" * 32)
    second = assign_hosts(ids, 8, b"b" * 32)
    # Independent keys agree on about 1 image in 8.
    assert np.mean(first == second) < 0.3


def test_assignment_spreads_images_evenly_over_the_hosts() -> None:
    counts = np.bincount(assign_hosts(_ids(2000), 8, b"site key " * 4), minlength=8)
    # 250 expected per host; the bound is about four standard deviations.
    assert counts.min() > 190 and counts.max() < 310


def test_assignment_rejects_an_empty_bank_or_key() -> None:
    with pytest.raises(ValueError, match="n_hosts must be at least 1"):
        assign_hosts(["a"], 0, b"k" * 32)
    with pytest.raises(ValueError, match="key must not be empty"):
        assign_hosts(["a"], 3, b"")


def test_key_fingerprint_identifies_a_key_without_revealing_it() -> None:
    key = b"\x01" * 32
    fingerprint = key_fingerprint(key)
    assert fingerprint == key_fingerprint(bytes(key)) and len(fingerprint) == 64
    assert fingerprint != key_fingerprint(b"\x02" * 32)
    assert fingerprint != hashlib.sha256(key).hexdigest()


def test_phantom_hosts_are_seeded_by_the_secret_key() -> None:
    # A bank anyone could regenerate would give away every surrogate's host.
    first, second = phantom_bank_seed(b"\x01" * 32), phantom_bank_seed(b"\x02" * 32)
    assert first == phantom_bank_seed(b"\x01" * 32) and first != second and first >= 0
    assert not np.array_equal(phantom_host_bank(2, 16, first).images, phantom_host_bank(2, 16, second).images)
