"""The run config: defaults from pyproject.toml, one-line errors, sites, strategies."""

import pytest
from flwr.serverapp.strategy import (
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
)

from clients.site import describe_node, site_config_for
from fesf_fed.errors import ConfigError
from fesf_fed.federation.protocol import NodeDescription
from fesf_fed.federation.settings import (
    SITE_OVERRIDE_PREFIX,
    STRATEGY_NAMES,
    RunSettings,
    parse_run_settings,
    simulated_site_configs,
)
from server.sites import Site, check_minimums
from server.strategies import build_strategy
from tests.simulation import run_config


def test_pyproject_defaults_are_valid_and_simulate_three_sites_on_the_demo_set():
    settings, overrides = parse_run_settings(run_config())
    assert (settings.strategy, settings.mode, settings.model) == (
        "fedavg",
        "x_su_prime",
        "smallcnn",
    )
    sites = simulated_site_configs(settings, overrides)
    assert [site.site for site in sites] == ["site-1", "site-2", "site-3"]
    assert {site.data.source for site in sites} == {"demo"}
    # The shipped demo set may use generated hosts; real data must name its bank.
    assert {site.hosts.source for site in sites} == {"phantom"}
    assert [site.data.partition.index for site in sites] == [0, 1, 2]
    assert sites[0].data.partition.scheme == "dirichlet"
    assert sites[0].iqem.steps == overrides["iqem.steps"]


@pytest.mark.parametrize(
    ("name", "cls", "attribute", "key", "value"),
    [
        ("fedavg", FedAvg, "fraction_train", "fraction-train", 0.5),
        ("fedprox", FedProx, "proximal_mu", "fedprox-mu", 0.7),
        ("fedadam", FedAdam, "eta", "fedopt-eta", 0.05),
        ("fedyogi", FedYogi, "tau", "fedopt-tau", 0.01),
        ("fedavgm", FedAvgM, "server_momentum", "fedavgm-momentum", 0.5),
        ("fedmedian", FedMedian, "min_train_nodes", "min-train-nodes", 3),
        ("fedtrimmedavg", FedTrimmedAvg, "beta", "fedtrimmedavg-beta", 0.1),
    ],
)
def test_one_run_config_value_selects_the_strategy_and_its_settings(name, cls, attribute, key, value):
    settings, _ = parse_run_settings(run_config(strategy=name, **{key: value}))
    strategy = build_strategy(settings, settings.num_sites)
    assert type(strategy) is cls
    assert getattr(strategy, attribute) == value


def test_every_strategy_name_the_run_config_accepts_builds():
    for name in STRATEGY_NAMES:
        settings, _ = parse_run_settings(run_config(strategy=name))
        assert type(build_strategy(settings, settings.num_sites)).__name__.lower() == name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"strategy": "fedsgd"},
            "run config strategy: Input should be 'fedavg'.*got 'fedsgd'",
        ),
        ({"mode": "surrogate"}, "run config mode: .*'x_su_prime'.*got 'surrogate'"),
        (
            {"num-server-rounds": 0},
            "run config num-server-rounds: .*greater than or equal to 1",
        ),
        ({"learning-rate": -1.0}, "run config learning-rate"),
        ({"num-sever-rounds": 3}, "num-sever-rounds: unknown key"),
        (
            {"site-config": "configs/br35h.yaml"},
            "site-config: 'configs/br35h.yaml' is relative; give an absolute path",
        ),
    ],
)
def test_bad_run_config_values_are_one_line_errors_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message) as caught:
        parse_run_settings(run_config(**overrides))
    assert "\n" not in str(caught.value)


def test_a_bad_site_default_names_the_site_field():
    settings, overrides = parse_run_settings(run_config(**{"site.data.image_size": 2}))
    with pytest.raises(ConfigError, match="data.image_size"):
        simulated_site_configs(settings, overrides)


def test_a_sites_file_gives_each_site_its_own_data(tmp_path):
    (tmp_path / "a.yaml").write_text("data: {source: phantom, phantom_per_class: 10}\n")
    (tmp_path / "b.yaml").write_text("data: {source: phantom, phantom_per_class: 20, seed: 5}\n")
    sites_file = tmp_path / "sites.yaml"
    sites_file.write_text("sites:\n  hospital-a: a.yaml\n  hospital-b: b.yaml\n")
    settings, overrides = parse_run_settings(run_config(**{"sites-file": str(sites_file)}))
    sites = simulated_site_configs(settings, overrides)
    assert [(s.site, s.data.phantom_per_class, s.data.seed) for s in sites] == [
        ("hospital-a", 10, 0),
        ("hospital-b", 20, 5),
    ]
    assert {s.iqem.steps for s in sites} == {100}  # site. keys fill what the files leave unset
    assert all(s.data.partition.count == 1 for s in sites)


def test_a_missing_sites_file_is_a_clear_error(tmp_path):
    settings, overrides = parse_run_settings(run_config(**{"sites-file": str(tmp_path / "nope.yaml")}))
    with pytest.raises(ConfigError, match="nope.yaml: sites file not found"):
        simulated_site_configs(settings, overrides)


def test_minimums_above_the_number_of_sites_are_refused():
    settings, _ = parse_run_settings(run_config(**{"min-train-nodes": 4}))
    sites = [Site(i, f"site-{i}", 1, i - 1) for i in (1, 2, 3)]
    with pytest.raises(ConfigError, match="min-train-nodes: 4 exceeds the 3 sites"):
        check_minimums(settings, sites)


def test_a_deployed_node_is_the_site_its_node_config_names(tmp_path):
    node_config = {
        "site": "A",
        "data-dir": str(tmp_path / "images"),
        "hosts-dir": str(tmp_path / "hosts"),
    }
    assert describe_node(node_config) == NodeDescription(site="A")
    assert describe_node({"partition-id": 1, "num-partitions": 2}) == NodeDescription(partition_id=1, num_partitions=2)
    settings, overrides = parse_run_settings(run_config())
    config = site_config_for({}, node_config, settings, overrides)
    assert (config.site, config.data.source, config.data.path) == (
        "A",
        "folder",
        tmp_path / "images",
    )
    assert (config.hosts.source, config.hosts.path) == ("folder", tmp_path / "hosts")


def test_a_simulated_node_needs_a_valid_site_index():
    settings, overrides = parse_run_settings(run_config())
    node = {"partition-id": 0, "num-partitions": 2}
    assert site_config_for({"site-index": 2}, node, settings, overrides).site == "site-3"
    with pytest.raises(ConfigError, match="site-index 3 names none of the run's 3 simulated sites"):
        site_config_for({"site-index": 3}, node, settings, overrides)


def test_pyproject_and_the_settings_model_give_the_same_defaults():
    # The defaults are written twice (Flower reads pyproject.toml, the model validates): they must agree.
    declared = {key: value for key, value in run_config().items() if not key.startswith(SITE_OVERRIDE_PREFIX)}
    assert declared == RunSettings().model_dump(by_alias=True)
