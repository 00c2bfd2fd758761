"""Site configs: the paper's defaults, one-line errors that name the field, paths relative to the file."""

from pathlib import Path

import pytest

from fesf_fed.config import SiteConfig, load_config, parse_config
from fesf_fed.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_the_papers_and_build_the_phantom_demo() -> None:
    config = load_config()
    assert (config.pipeline.alpha, config.pipeline.beta) == (0.5, 0.5)
    assert (config.pipeline.refine_alpha, config.pipeline.refine_beta) == (0.5, 0.1)
    assert config.data.source == "phantom" and config.hosts.source == "phantom"
    assert config.data.test_fraction == 0.4
    assert config.pipeline.outputs == ("x_sy", "x_su", "x_su_prime")


#: Every site config that ships; configs/results.yaml is fesf-reproduce's suite (tests/test_reproduce.py).
SITE_CONFIGS = sorted(path for path in (REPO / "configs").glob("*.yaml") if path.name != "results.yaml")


@pytest.mark.parametrize("path", SITE_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    assert isinstance(load_config(path), SiteConfig)


@pytest.mark.parametrize(
    "raw,message",
    [
        ({"pipeline": {"alpha": 0.7}}, r"pipeline\.alpha: Input should be less than or equal to 0\.5 \(got 0\.7\)"),
        ({"pipeline": {"beta": -1}}, r"pipeline\.beta: Input should be greater than or equal to 0"),
        ({"pipeline": {"alpah": 0.3}}, r"pipeline\.alpah: unknown field; allowed here: alpha, beta"),
        (
            {"data": {"source": "dicomdir"}},
            r"data\.source: Input should be 'phantom', 'demo', 'folder', 'medmnist' or 'csv'",
        ),
        ({"data": {"source": "folder"}}, r"data\.path is required for source 'folder'"),
        ({"data": {"source": "folder", "path": "x"}}, r"hosts\.source is required for real data"),
        ({"hosts": {"source": "folder"}}, r"hosts\.path is required"),
        (
            {"pipeline": {"outputs": ["x_su", "x_zz"]}},
            r"pipeline\.outputs\.1: Input should be 'x_sy', 'x_su' or 'x_su_prime'",
        ),
        ({"data": {"image_size": 4}}, r"data\.image_size: Input should be greater than or equal to 8"),
        ({"iqem": 3}, r"iqem: expected a mapping of fields"),
        ({"site": "../etc"}, r"site: String should match pattern"),
        ({"data": {"seed": -1}}, r"data\.seed: Input should be greater than or equal to 0"),
    ],
)
def test_invalid_values_name_the_field_and_what_is_allowed(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^site\.yaml: .*" + message):
        parse_config(raw, source="site.yaml")


def test_errors_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("pipeline:\n  alpha: 2\n  beta: 3\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "\n" not in str(error.value)
    assert "pipeline.alpha" in str(error.value) and "pipeline.beta" in str(error.value)


def test_missing_file_and_bad_yaml_are_reported_with_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  source: [folder\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML at line \d+"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(listing)


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    path = folder / "site.yaml"
    path.write_text("data: {source: folder, path: ../images}\nhosts: {source: folder, path: /abs/hosts}\n")
    monkeypatch.chdir("/")
    config = load_config(path)
    assert config.data.path == tmp_path / "images"
    assert config.hosts.path == Path("/abs/hosts")


def test_overrides_replace_file_values_and_are_validated() -> None:
    config = load_config(overrides={"data.image_size": 32, "pipeline.beta": 0.2})
    assert config.data.image_size == 32 and config.pipeline.beta == 0.2
    with pytest.raises(ConfigError, match="data.image_size"):
        load_config(overrides={"data.image_size": "big"})
