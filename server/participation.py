"""The participation policy: how many sites a round needs, how long it waits for them, who was missing.

Flower's strategies sample sites and aggregate whatever replies come back; a site that is
gone (its SuperNode killed, its network down) just leaves the round smaller. A hospital run
needs ``min-train-nodes`` and ``min-evaluate-nodes`` to mean what they say:

- A phase sends its messages and waits for replies up to ``round-timeout`` seconds.
- A site whose SuperNode or message Flower reports unavailable is asked again every
  :data:`RETRY_SECONDS` until that deadline, as long as the phase has fewer good replies
  than its minimum: a site restarted by its service (same key, so the same SuperNode) rejoins
  the round. A site whose ClientApp failed is not asked again (it would fail again).
- Enough good replies: the round goes on without the missing sites, which are returned
  with the reason, stored per round, and end the run ``degraded`` rather than ``finished``.
- Fewer than the minimum at the deadline: :class:`TooFewSites`, and the run ends ``failed``,
  resumable from its last checkpoint.
"""

import re
import time
from dataclasses import dataclass, field

from flwr.app import Error, Message
from flwr.common.constant import ErrorCode

from fesf_fed.errors import FesfError

from .sites import SiteGrid

#: Seconds between two tries of a site that Flower reported unavailable.
RETRY_SECONDS = 5.0
#: Flower's errors that say a site could not be reached, rather than that it failed: worth a retry.
_UNREACHABLE = (ErrorCode.NODE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE)


#: What a site's failure is called, by Flower's error code, where the code says it all.
_BY_CODE = {
    ErrorCode.NODE_UNAVAILABLE: "its SuperNode is offline",
    ErrorCode.MESSAGE_UNAVAILABLE: "its message expired before it was delivered",
    ErrorCode.REPLY_MESSAGE_UNAVAILABLE: "its reply expired before it was collected",
    ErrorCode.CLIENT_APP_CRASHED: "its ClientApp stopped responding (crashed)",
}
_COLOURS = re.compile(r"\x1b\[[0-9;]*m")
#: Flower's text for an exception a ClientApp raised: ``<class 'ValueError'>:<'the message'>``.
_RAISED = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>:<'(.*)'>", re.DOTALL)


def failure_reason(error: Error) -> str:
    """A site's error reply in one line for the run store and the log, without Ray's reprs or colour codes.

    A simulated site's exception reaches the server wrapped by Ray; its own message is kept.
    """
    if error.code in _BY_CODE:
        return _BY_CODE[error.code]
    text = _COLOURS.sub("", error.reason or "")
    if "Message:" in text:  # Ray's ClientAppException: "... occurred. Message: <the site's message>"
        text = text.rsplit("Message:", 1)[1].removesuffix("'>")
    elif match := _RAISED.fullmatch(text.strip()):
        text = f"{match[1]}: {match[2]}"
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    line = re.sub(r" at 0x[0-9a-f]+", "", line)  # object addresses say nothing to an operator
    return f"its ClientApp failed: {line}" if line else "its ClientApp failed; see the site's log"


class TooFewSites(FesfError):
    """A round phase had fewer good replies than its minimum when ``round-timeout`` ran out."""


@dataclass
class PhaseReplies:
    """What one phase of a round got back.

    Attributes
    ----------
    replies : list of Message
        The good replies (no error), in site order.
    missing : dict
        Each sampled site without a good reply, by name: why, in one line.
    """

    replies: list[Message] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)


def gather(
    grid: SiteGrid,
    messages: list[Message],
    *,
    minimum: int,
    timeout: float,
    phase: str,
    server_round: int,
    setting: str,
) -> PhaseReplies:
    """Send ``messages`` (addressed to site ids) and collect their replies by the participation policy.

    Parameters
    ----------
    grid : SiteGrid
        The run's sites.
    messages : list of Message
        What the strategy's ``configure_train`` or ``configure_evaluate`` made, one per sampled site.
    minimum : int
        The good replies the phase needs (at least one, whatever is asked, when any site is sampled).
    timeout : float
        ``round-timeout``: seconds the phase may wait, retries included.
    phase, server_round, setting : str, int, str
        For the messages: ``train`` or ``evaluate``, the round, the minimum's run setting.

    Raises
    ------
    TooFewSites
        Fewer good replies than ``minimum`` when ``timeout`` has passed: one line naming the
        missing sites, why, and how to resume.
    """
    deadline = time.monotonic() + timeout
    by_site = {message.metadata.dst_node_id: message for message in messages}
    names = {site_id: grid.sites[site_id].name for site_id in by_site}
    needed = min(max(minimum, 1), len(by_site))
    good: dict[int, Message] = {}
    why: dict[int, str] = {}
    asking = list(by_site)
    while asking:
        left = deadline - time.monotonic()
        replies = list(grid.send_and_receive([by_site[site_id] for site_id in asking], timeout=max(left, 0.0)))
        answered = {grid.site_of_reply(reply): reply for reply in replies}
        retry = []
        for site_id in asking:
            reply = answered.get(site_id)
            if reply is None:
                why[site_id] = f"no reply within round-timeout ({timeout:g} s)"
            elif reply.has_error():
                why[site_id] = failure_reason(reply.error)
                if reply.error.code in _UNREACHABLE:
                    retry.append(site_id)
            else:
                good[site_id] = reply
                why.pop(site_id, None)
        if len(good) >= needed or not retry or time.monotonic() + RETRY_SECONDS >= deadline:
            break
        time.sleep(RETRY_SECONDS)
        asking = retry
    missing = {names[site_id]: reason for site_id, reason in sorted(why.items())}
    if len(good) < needed:
        listing = "; ".join(f"{name}: {reason}" for name, reason in missing.items())
        raise TooFewSites(
            f"round {server_round}: {len(good)} of {len(by_site)} sampled sites sent a {phase} reply, "
            f"{needed} needed ({setting}); missing {listing}"
        )
    return PhaseReplies([good[site_id] for site_id in sorted(good)], missing)
