"""Which site a message is for, and that site's images, kept in memory between rounds.

A deployed SuperNode is one hospital: its node config names the site (``site``)
and where its images are (``data-dir``, optionally ``site-config`` and
``hosts-dir``). A simulated SuperNode has only a partition id; the ServerApp tells
it, in each message, which of the run config's sites to be (``site-index``), so
any number of SuperNodes can simulate any number of sites.
"""

from collections import OrderedDict
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from fesf_fed.config import SiteConfig, load_config
from fesf_fed.errors import ConfigError
from fesf_fed.federation.protocol import SITE_INDEX, NodeDescription, SiteNodeConfig
from fesf_fed.federation.settings import RunSettings, simulated_site_configs
from fesf_fed.progress import ProgressCallback, ProgressFile
from fesf_fed.training_data import SiteData, load_site_data


def describe_node(node_config: Mapping[str, Any]) -> NodeDescription:
    """What a SuperNode tells the ServerApp at roll call: its site, or its simulation partition."""
    if (deployed := SiteNodeConfig.from_node_config(node_config)) is not None:
        return NodeDescription(site=deployed.site)
    return NodeDescription(
        partition_id=int(node_config["partition-id"]), num_partitions=int(node_config["num-partitions"])
    )


def deployed_site_config(node: SiteNodeConfig) -> SiteConfig:
    """A deployed site's config: its ``site-config`` file (if any) with the node config's values on top.

    The run config's ``site.`` defaults do not apply: a hospital's own settings are what
    ``fesf-client`` built its surrogates with before joining, and must stay so.
    """
    values: dict[str, Any] = {"site": node.site}
    if node.data_dir is not None:
        values["data.path"] = node.data_dir
        if node.site_config is None:
            values["data.source"] = "folder"
    if node.hosts_dir is not None:
        values.update({"hosts.source": "folder", "hosts.path": node.hosts_dir})
    if node.device is not None:
        values["device"] = node.device
    return load_config(node.site_config, command_line=values)


def site_config_for(
    message_config: Mapping[str, Any],
    node_config: Mapping[str, Any],
    settings: RunSettings,
    site_defaults: dict[str, Any],
) -> SiteConfig:
    """The config of the site a message is addressed to.

    Raises
    ------
    ConfigError
        If a simulated node gets a message without a valid ``site-index``.
    """
    if (deployed := SiteNodeConfig.from_node_config(node_config)) is not None:
        return deployed_site_config(deployed)
    sites = _simulated_sites(settings, tuple(sorted(site_defaults.items())))
    index = message_config.get(SITE_INDEX)
    if not isinstance(index, int) or not 0 <= index < len(sites):
        raise ConfigError(f"message site-index {index!r} names none of the run's {len(sites)} simulated sites")
    return sites[index]


@lru_cache(maxsize=4)
def _simulated_sites(settings: RunSettings, site_defaults: tuple[tuple[str, Any], ...]) -> list[SiteConfig]:
    # Every message of a run carries the same settings: validate its sites once per process, not per message.
    return simulated_site_configs(settings, dict(site_defaults))


def progress_file(node_config: Mapping[str, Any], run_id: int, site: str) -> ProgressFile | None:
    """Where a simulated site reports its preparation to the ServerApp; None for a deployed site.

    Only a simulation runs the ServerApp on this machine, with this FESF_HOME, to read the
    file. A deployed site built its surrogates before joining, showing its own progress
    bars, and must not leave a file per run in its FESF_HOME.
    """
    return None if SiteNodeConfig.from_node_config(node_config) is not None else ProgressFile(run_id, site)


#: Sites' data loaded in this process, most recently used last: a SuperNode serves the same
#: sites every round. A plain bounded dict, not lru_cache, because ``report`` is no part of the key.
_loaded: OrderedDict[tuple[SiteConfig, str], SiteData] = OrderedDict()
_KEEP = 16


def site_data(config: SiteConfig, mode: str, report: ProgressCallback | None = None) -> SiteData:
    """The site's images in ``mode``, loaded (and its surrogates built) once per process.

    ``report`` hears of the loading and building when this call does them; a later call
    with another ``report``, or none, finds the same data.
    """
    key = (config, mode)
    if key not in _loaded:
        _loaded[key] = load_site_data(config, mode, report=report)
        if len(_loaded) > _KEEP:
            _loaded.popitem(last=False)
    _loaded.move_to_end(key)
    return _loaded[key]
