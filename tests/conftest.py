"""Fixtures shared by the test modules."""

from pathlib import Path

import pytest

# The real public datasets live beside the repository, never inside it (see its README.md).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The shared real-data folder; the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data not found: real-data tests need the shared data folder beside the repo")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def fesf_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh FESF_HOME per test, so no test reads or writes the user's ~/.fesf."""
    home = tmp_path_factory.mktemp("fesf-home")
    monkeypatch.setenv("FESF_HOME", str(home))
    return home


#: Config overrides that make a whole build take about a second: tiny images, nets and training.
TINY_BUILD = {
    "data.image_size": 16,
    "data.phantom_per_class": 8,
    "hosts.phantom_count": 3,
    "iqem.steps": 3,
    "iqem.batch_size": 4,
    "iqem.base_channels": 4,
    "iqem.res_blocks": 1,
    "iqem.disc_channels": 4,
    "iqem.disc_layers": 1,
    "quality.max_images": 4,
    "pipeline.batch_size": 5,
    "device": "cpu",
}


@pytest.fixture
def tiny_build() -> dict[str, object]:
    """The overrides of TINY_BUILD, for tests that build surrogates."""
    return dict(TINY_BUILD)
