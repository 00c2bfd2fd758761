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
    assert config.pipeline.amplitude_noise == 0.0
    assert config.data.source == "phantom" and config.hosts.source == "phantom"
    assert config.data.test_fraction == 0.4
    assert config.pipeline.outputs == ("x_sy", "x_su", "x_su_prime")


#: Every site config that ships; configs/results.yaml is fesf-reproduce's suite (tests/test_reproduce.py).
SITE_CONFIGS = sorted(path for path in (REPO / "configs").glob("*.yaml") if path.name != "results.yaml")


@pytest.mark.parametrize("path", SITE_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    assert isinstance(load_config(path), SiteConfig)


@pytest.mark.parametrize("name", ["br35h", "breastmnist", "pneumoniamnist", "retinamnist", "phantom"])
def test_the_dataset_configs_keep_the_papers_strengths_for_the_reproduction(name: str) -> None:
    pipeline = load_config(REPO / "configs" / f"{name}.yaml").pipeline
    assert (pipeline.alpha, pipeline.beta, pipeline.refine_alpha, pipeline.refine_beta) == (0.5, 0.5, 0.5, 0.1)


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
    config = load_config(command_line={"data.image_size": 32, "pipeline.beta": 0.2})
    assert config.data.image_size == 32 and config.pipeline.beta == 0.2
    with pytest.raises(ConfigError, match="data.image_size"):
        load_config(command_line={"data.image_size": "big"})


def test_layers_win_in_the_documented_order(tmp_path: Path) -> None:
    # docs/configuration.md: defaults < run config site. keys < file < command line < what the run assigns.
    path = tmp_path / "site.yaml"
    path.write_text("site: from-file\niqem: {steps: 7, lr: 0.5}\n")
    config = load_config(
        path,
        run_config={"iqem.steps": 5, "iqem.batch_size": 3},
        command_line={"iqem.lr": 0.25, "site": "from-command-line"},
        assigned={"site": "site-2"},
    )
    assert config.iqem.batch_size == 3  # only the run config sets it
    assert config.iqem.steps == 7  # the file wins over the run config
    assert config.iqem.lr == 0.25  # the command line wins over the file
    assert config.site == "site-2"  # what the run assigns wins over all


def test_one_path_rule_per_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    path = folder / "site.yaml"
    path.write_text("hosts: {source: folder, path: ../hosts}\n")
    monkeypatch.chdir(tmp_path)
    config = load_config(path, command_line={"data.source": "folder", "data.path": "images"})
    assert config.hosts.path == tmp_path / "hosts"  # from the file's folder
    assert config.data.path == tmp_path / "images"  # from the working directory
    with pytest.raises(ConfigError, match=r"^run config site\.data\.path: 'images' is relative; give an absolute path"):
        load_config(run_config={"data.source": "folder", "data.path": "images"})


def test_an_error_names_the_layer_that_set_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^run config site\.iqem\.steps: Input should be greater than or equal to 0"):
        load_config(run_config={"iqem.steps": -1})
    with pytest.raises(ConfigError, match=r"^command line iqem\.stepz: unknown field"):
        load_config(command_line={"iqem.stepz": 3})
    path = tmp_path / "site.yaml"
    path.write_text("iqem: {steps: -1}\n")
    with pytest.raises(ConfigError, match=r"site\.yaml: iqem\.steps: Input should be greater than or equal to 0"):
        load_config(path, run_config={"iqem.lr": 0.1})


def test_an_empty_section_sets_nothing_and_a_dotted_key_in_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("data: {}\n")
    assert load_config(path, run_config={"data.image_size": 32}).data.image_size == 32
    path.write_text("data.image_size: 32\n")
    with pytest.raises(ConfigError, match=r"site\.yaml: data\.image_size: nest the field"):
        load_config(path)


def test_a_missing_field_is_blamed_on_the_file_not_on_a_layer_that_set_something_else(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("data: {source: folder}\nhosts: {source: phantom}\n")
    with pytest.raises(ConfigError, match=r"^\S*site\.yaml: data: data\.path is required"):
        load_config(path, command_line={"data.image_size": 32})
