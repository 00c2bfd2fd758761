"""The `fesf` command as a user runs it: tables on success, one line and status 2 on bad input.

The first test runs it as a separate process; the others call its ``main`` in this
process (the same code from argument parsing to exit status), which saves a torch import each.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY_BUILD

REPO = Path(__file__).resolve().parents[1]
TINY_FLAGS = [arg for field, value in TINY_BUILD.items() for arg in ("--set", f"{field}={value}")]


def fesf(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fesf_fed.cli", *args, "--quiet"],
        check=False,
        capture_output=True,
        text=True,
        env={"FESF_HOME": str(home), "PATH": "/usr/bin:/bin", "COLUMNS": "160"},
        cwd=REPO,
        timeout=300,
    )


def test_surrogates_prints_counts_and_quality_then_reuses_the_cache(fesf_home: Path, fesf_main) -> None:
    first = fesf("surrogates", "--config", "configs/phantom.yaml", *TINY_FLAGS, home=fesf_home)
    assert first.returncode == 0, first.stderr
    for text in (
        "Site A: surrogates",
        "normal",
        "lesion",
        "x_pl vs x_su'",
        "SSIM",
        "PSNR",
        "LPIPS unavailable",
        "built (",
    ):
        assert text in first.stdout
    second = fesf_main("surrogates", "--config", str(REPO / "configs/phantom.yaml"), *TINY_FLAGS)
    assert second.returncode == 0 and "reused from the cache (no work done)" in second.stdout

    quality = fesf_main("quality", "--config", str(REPO / "configs/phantom.yaml"), *TINY_FLAGS)
    assert quality.returncode == 0 and "host vs x_sy" in quality.stdout


def test_quality_before_a_build_says_what_to_run(fesf_main) -> None:
    result = fesf_main("quality", *TINY_FLAGS)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: no surrogates built") and "fesf surrogates" in result.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "pipeline.alpha=0.9"], "pipeline.alpha: Input should be less than or equal to 0.5"),
        (["--config", "missing.yaml"], "missing.yaml: config file not found"),
        (["--set", "alpha"], "expected KEY=VALUE"),
        (["--set", "pipeline.beta=["], "--set 'pipeline.beta=[': the value is not valid YAML; quote it"),
        (["--set", "device=cuda:7"], "device: 'cuda:7'"),
        (["--source", "folder", "--data", "/no/such/folder", "--host-source", "phantom"], "/no/such/folder"),
    ],
)
def test_bad_input_is_one_line_with_status_2(fesf_main, args: list[str], message: str) -> None:
    result = fesf_main("surrogates", *TINY_FLAGS, *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_data_check_counts_classes_and_lists_bad_files(fesf_main, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("benign", "malignant"):
        (tmp_path / name).mkdir()
        for index in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(tmp_path / name / f"{index}.png")
    (tmp_path / "benign" / "broken.png").write_bytes(b"\x89PNG not really")
    result = fesf_main("data", "check", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "6 usable images" in result.stdout and "benign" in result.stdout and "malignant" in result.stdout
    assert "broken.png" in result.stdout
    assert "no near-duplicates" in result.stdout


def test_data_check_reports_near_duplicate_groups(fesf_main, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for name in ("benign", "malignant"):
        (tmp_path / name).mkdir()
        for index in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(tmp_path / name / f"{index}.png")
    copy = np.asarray(Image.open(tmp_path / "benign" / "0.png"))
    Image.fromarray(copy).save(tmp_path / "benign" / "0-again.png")
    Image.fromarray(copy[:, ::-1]).save(tmp_path / "malignant" / "0-mirrored.png")
    result = fesf_main("data", "check", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "1 group(s) of 2+ images hold 3 of 8 images" in result.stdout
    assert "benign: 2, malignant: 1" in result.stdout and "benign/0-again.png" in result.stdout
    bad = fesf_main("data", "check", str(tmp_path), "--duplicate-distance", "99")
    assert bad.returncode == 2 and "duplicate_distance" in bad.stderr and "Traceback" not in bad.stderr
