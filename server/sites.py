"""The run's sites, found by roll call, and a grid that addresses them instead of SuperNodes.

Flower strategies sample and message *nodes*. Here the unit of a federation is a
*site*: a deployed SuperNode is one site, while in simulation a few SuperNodes can
stand in for many sites (Flower's default local simulation has two). :class:`SiteGrid`
gives each site an id of its own and forwards messages to the node that hosts it,
so every strategy samples, weights and aggregates sites unchanged.
"""

import time
from collections.abc import Iterable
from dataclasses import dataclass
from logging import ERROR, INFO

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fesf_fed.errors import ConfigError, FesfError
from fesf_fed.federation import protocol
from fesf_fed.federation.settings import RunSettings, simulated_site_configs


@dataclass(frozen=True)
class Site:
    """A site of the run: its id in :class:`SiteGrid`, its name and the node that hosts it."""

    site_id: int
    name: str
    node_id: int
    #: Index into the run config's simulated sites; None for a deployed site.
    simulated_index: int | None


def _wait_for_nodes(grid: Grid, minimum: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < max(minimum, 1):
        if time.monotonic() > deadline:
            raise FesfError(
                f"only {len(nodes)} SuperNode(s) connected after {timeout:.0f} s, {minimum} needed "
                "(min-available-nodes): start more sites or lower min-available-nodes"
            )
        log(INFO, "Waiting for SuperNodes: %d connected, %d needed", len(nodes), minimum)
        time.sleep(1)
    return nodes


def _refusal(name: str, node: int, registered: dict[str, int]) -> str:
    if name not in registered:
        reason = f"is not one of the consortium's sites ({', '.join(sorted(registered))})"
    else:
        reason = f"is registered as SuperNode {registered[name]}; each site must connect with its own key"
    return f"SuperNode {node} claims site {name!r}, which {reason}"


def discover_sites(grid: Grid, settings: RunSettings, site_defaults: dict, timeout: float) -> list["Site"]:
    """Ask every SuperNode what it is and lay the run's sites out on them.

    Deployed nodes name their site in their node config. Simulated nodes host the
    run config's sites round-robin by partition id: with K nodes, node ``p`` hosts
    sites ``p``, ``p + K``, ...

    Raises
    ------
    FesfError
        If nodes do not answer, two nodes claim one site, or deployed and simulated
        nodes are mixed.
    """
    nodes = _wait_for_nodes(grid, settings.min_available_nodes, timeout)
    query = RecordDict({protocol.CONFIG: ConfigRecord()})
    replies = list(
        grid.send_and_receive(
            [Message(query, dst_node_id=node, message_type=protocol.DESCRIBE) for node in nodes],
            timeout=timeout,
        )
    )
    deployed: dict[str, int] = {}
    partitions: dict[int, int] = {}
    registered = settings.registered_sites()
    refused: list[str] = []
    for reply in replies:
        if reply.has_error():
            raise FesfError(f"SuperNode {reply.metadata.src_node_id} failed the roll call: {reply.error.reason}")
        node = protocol.node_of(reply.content)
        if node.site is not None:
            name = node.site
            if registered and registered.get(name) != reply.metadata.src_node_id:
                refused.append(_refusal(name, reply.metadata.src_node_id, registered))
                log(ERROR, "Refused %s", refused[-1])
                continue
            if name in deployed:
                raise FesfError(f"two SuperNodes claim site {name!r}: give each SuperNode its own site name")
            deployed[name] = reply.metadata.src_node_id
        else:
            assert node.partition_id is not None  # NodeDescription.from_config sets it for a simulated node
            partitions[node.partition_id] = reply.metadata.src_node_id
    if deployed and partitions:
        raise FesfError("deployed and simulated SuperNodes are connected together: run them as separate federations")
    if deployed or registered:
        # A node that is not who its key says is left out; the run goes on if the others suffice.
        needed = max(settings.min_available_nodes, settings.min_train_nodes, settings.min_evaluate_nodes, 1)
        if registered and len(deployed) < needed:
            raise FesfError(
                f"{len(deployed)} of the connected SuperNodes are registered sites, {needed} needed; refused: "
                + ("; ".join(refused) or "none")
            )
        return [Site(number, name, node, None) for number, (name, node) in enumerate(sorted(deployed.items()), 1)]
    configs = simulated_site_configs(settings, site_defaults)
    hosts = [partitions[p] for p in sorted(partitions)]
    if len(hosts) > len(configs):
        log(
            INFO,
            "%d SuperNodes for %d sites: %d SuperNodes stay idle",
            len(hosts),
            len(configs),
            len(hosts) - len(configs),
        )
    return [Site(index + 1, config.site, hosts[index % len(hosts)], index) for index, config in enumerate(configs)]


def check_minimums(settings: RunSettings, sites: list[Site]) -> None:
    """Refuse minimums that the run's sites can never meet (a strategy would wait forever)."""
    for key in ("min-train-nodes", "min-evaluate-nodes", "min-available-nodes"):
        value = getattr(settings, key.replace("-", "_"))
        if value > len(sites):
            raise ConfigError(f"run config {key}: {value} exceeds the {len(sites)} sites of this run; lower it")


class SiteGrid(Grid):
    """A :class:`~flwr.serverapp.Grid` over the run's sites: its node ids are site ids.

    A message addressed to a site goes to the node that hosts it, with the site's
    ``site-index`` added to its ``config`` record for a simulated site. Strategies use
    ``get_node_ids`` and ``send_and_receive``; ``push_messages`` / ``pull_messages`` serve
    a caller that reports while it waits. The run and ``create_message`` are the wrapped
    grid's.
    """

    def __init__(self, grid: Grid, sites: list[Site]) -> None:
        self.grid = grid
        self.sites = {site.site_id: site for site in sites}
        # The site id of every message sent, by message id: a reply names the message it answers.
        self._sent: dict[str, int] = {}

    def set_run(self, run: Run) -> None:
        """Set the wrapped grid's run."""
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        """The wrapped grid's run."""
        return self.grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """A message, made by the wrapped grid, for the site ``dst_node_id`` (a site id)."""
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """The site ids."""
        return list(self.sites)

    def _forward(self, message: Message) -> Message:
        site = self.sites[message.metadata.dst_node_id]
        content = RecordDict(dict(message.content.items()))
        config = ConfigRecord(dict(protocol.config_of(message.content)))
        if site.simulated_index is not None:
            config[protocol.SITE_INDEX] = site.simulated_index
        content[protocol.CONFIG] = config
        return Message(
            content,
            dst_node_id=site.node_id,
            message_type=message.metadata.message_type,
        )

    def _forward_all(self, messages: Iterable[Message]) -> list[tuple[Message, int]]:
        """Each message as forwarded to its site's node, with the site id it was addressed to."""
        return [(self._forward(message), message.metadata.dst_node_id) for message in messages]

    def _sites_by_id(self, forwarded: list[tuple[Message, int]]) -> dict[str, int]:
        # The grid assigns each message its id when it sends it.
        sites = {sent.metadata.message_id: site_id for sent, site_id in forwarded}
        self._sent.update(sites)
        return sites

    def site_of_reply(self, reply: Message) -> int:
        """The id of the site that ``reply`` (to a message sent through this grid) comes from, or is about.

        Asked once per reply: the message it answers is forgotten then, so a long run does not hoard ids.
        """
        return self._sent.pop(reply.metadata.reply_to_message_id)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Send ``messages`` and return the replies in site order.

        Replies arrive in whatever order sites finish, and strategies sample sites in random
        order; aggregating in site order makes the floating-point sums, and so a whole run,
        repeatable for a seed.
        """
        forwarded = self._forward_all(messages)
        replies = self.grid.send_and_receive([sent for sent, _ in forwarded], timeout=timeout)
        site_of = self._sites_by_id(forwarded)
        return sorted(replies, key=lambda reply: site_of[reply.metadata.reply_to_message_id])

    def push_messages(self, messages: Iterable[Message]) -> dict[str, int]:
        """Send ``messages`` without waiting; return the site id of each sent message, by message id.

        Iterating the dict gives the message ids, as :meth:`Grid.push_messages` does. Collect the
        replies with :meth:`pull_messages`; a reply's ``reply_to_message_id`` is one of these ids.
        """
        forwarded = self._forward_all(messages)
        self.grid.push_messages([sent for sent, _ in forwarded])
        return self._sites_by_id(forwarded)

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """The replies to ``message_ids`` that arrived since the last pull (each comes once)."""
        return list(self.grid.pull_messages(message_ids))
