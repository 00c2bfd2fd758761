"""Hospital deployment: keys, fesf-client's checks and refusals against a real TLS SuperLink, the loopback rehearsal.

Servers bind to 127.0.0.1 on free ports with a temporary FLWR_HOME, and every process
a test starts is stopped by its PID (process group) before the test ends.
"""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from flwr.app import ConfigRecord, Message
from flwr.common.config import parse_config_args
from flwr.supercore.task_identity import TaskIdentity

from clients.cli import SupernodeFailure, _node_config_argument, build_parser, node_config
from clients.site import site_config_for
from fesf_fed.deployment import follow_parent
from fesf_fed.deployment.pki import key_site, make_consortium_keys, server_hosts
from fesf_fed.deployment.processes import FlowerProcess, flower_env, flower_executable, free_port, wait_for_port
from fesf_fed.errors import INTERRUPTED, ConfigError, FesfError
from fesf_fed.federation.settings import parse_run_settings
from server.cli import _write_connection, register_site, site_keys
from server.sites import discover_sites
from tests.conftest import last_stored_round
from tests.processes import gone, kill_all, started_with
from tests.simulation import REPO, run_config

BIN = Path(sys.executable).parent
#: A site small enough to build in seconds.
TINY_SITE = {
    "data": {"source": "phantom", "image_size": 16, "phantom_per_class": 8},
    "hosts": {"source": "phantom", "phantom_count": 2},
    "iqem": {"steps": 2},
}


def test_keys_cover_the_server_names_name_their_sites_and_a_rerun_adds_a_site(tmp_path):
    keys = make_consortium_keys(tmp_path, ["link.example.org", "10.1.2.3"], ["A"])
    assert set(server_hosts(keys.server_folder / "server.pem")) == {"link.example.org", "10.1.2.3"}
    assert key_site(keys.site_keys / "A.pub") == "A"
    assert (keys.site_folder("A") / "auth.key").stat().st_mode & 0o777 == 0o600
    assert (keys.root / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}

    make_consortium_keys(tmp_path, ["link.example.org"], ["A", "B"])
    assert all(path.read_bytes() == data for path, data in before.items())  # nobody's key is reissued
    assert key_site(keys.site_keys / "B.pub") == "B"
    assert set(site_keys(keys.site_keys)) == {"A", "B"}


def test_with_the_ca_key_offline_sites_are_added_but_no_certificate_is_issued(tmp_path):
    keys = make_consortium_keys(tmp_path, ["localhost"], ["A"])
    ca_certificate = keys.ca_certificate.read_bytes()
    (tmp_path / "ca" / "ca.key").rename(tmp_path / "offline.key")

    make_consortium_keys(tmp_path, ["localhost"], ["A", "B"])
    assert keys.ca_certificate.read_bytes() == ca_certificate  # no new CA behind the operator's back
    assert (keys.site_folder("B") / "ca.crt").read_bytes() == ca_certificate
    (keys.server_folder / "server.pem").unlink()
    with pytest.raises(ConfigError, match="ca.key: missing, and the server certificate must be signed with it"):
        make_consortium_keys(tmp_path, ["localhost"], [])


def test_a_site_key_made_at_the_site_is_kept(tmp_path):
    keys = make_consortium_keys(tmp_path, ["localhost"], [])
    own = make_consortium_keys(tmp_path / "elsewhere", ["localhost"], ["A"]).site_folder("A") / "auth.pub"
    keys.site_keys.mkdir()
    (keys.site_keys / "A.pub").write_bytes(own.read_bytes())
    make_consortium_keys(tmp_path, ["localhost"], ["A"])
    assert (keys.site_keys / "A.pub").read_bytes() == own.read_bytes()
    assert not (keys.site_folder("A") / "auth.key").exists()


@pytest.mark.parametrize(
    "hosts,sites,message",
    [
        ([], ["A"], "hosts: name at least one"),
        (["bad host!"], ["A"], "server host 'bad host!': not a DNS name or IP address"),
        (["localhost"], ["../A"], "site '../A': use 1-64 letters"),
    ],
)
def test_bad_key_requests_are_refused_before_anything_is_written(tmp_path, hosts, sites, message):
    with pytest.raises(ConfigError, match=message):
        make_consortium_keys(tmp_path / "out", hosts, sites)
    assert not (tmp_path / "out").exists()


def test_a_server_certificate_is_not_silently_reused_for_new_host_names(tmp_path):
    make_consortium_keys(tmp_path, ["localhost"], [])
    with pytest.raises(ConfigError, match="issued for localhost, not link.example.org; delete server.pem"):
        make_consortium_keys(tmp_path, ["link.example.org"], [])


def test_a_deployed_site_uses_its_own_config_not_the_runs_site_defaults(tmp_path):
    config_file = tmp_path / "site.yaml"
    config_file.write_text(yaml.safe_dump({"site": "ignored", "data": {"source": "phantom", "image_size": 48}}))
    settings, defaults = parse_run_settings(run_config(**{"site.data.image_size": 16, "site.iqem.steps": 1}))
    config = site_config_for({}, {"site": "A", "site-config": str(config_file)}, settings, defaults)
    assert (config.site, config.data.image_size) == ("A", 48)
    assert config.iqem.steps != 1  # what fesf-client built before joining is what the ClientApp uses


def test_site_nodes_is_validated_and_parsed():
    settings, _ = parse_run_settings(run_config(**{"site-nodes": "A=12 B=18446744073709551615"}))
    assert settings.registered_sites() == {"A": 12, "B": 18446744073709551615}
    with pytest.raises(ConfigError, match="run config site-nodes"):
        parse_run_settings(run_config(**{"site-nodes": "A:12"}))


class _RollCallGrid:
    """Just enough of a Flower Grid for a roll call: each node answers with the site it claims."""

    def __init__(self, claims: dict[int, str]) -> None:
        self.claims = claims

    def get_node_ids(self) -> list[int]:
        return list(self.claims)

    def send_and_receive(self, messages: list[Message], *, timeout: float | None = None) -> list[SimpleNamespace]:
        return [
            SimpleNamespace(
                has_error=lambda: False,
                content={"node": ConfigRecord({"site": self.claims[message.metadata.dst_node_id]})},
                metadata=SimpleNamespace(src_node_id=message.metadata.dst_node_id),
            )
            for message in messages
        ]


def test_a_node_claiming_another_sites_name_is_left_out_of_the_run():
    # The ServerApp's messages need a run to belong to, as inside Flower.
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    minimums = {f"min-{kind}-nodes": 1 for kind in ("available", "train", "evaluate")}
    settings, defaults = parse_run_settings(run_config(**{"site-nodes": "A=11 B=22", **minimums}))
    sites = discover_sites(_RollCallGrid({11: "A", 22: "A", 33: "C"}), settings, defaults, timeout=5)  # type: ignore[arg-type]  # a Grid look-alike
    assert [(site.name, site.node_id) for site in sites] == [("A", 11)]
    # As fesf-server runs it, every registered site is needed: a refused node then stops the run, saying why.
    settings, defaults = parse_run_settings(run_config(**{"site-nodes": "A=11 B=22"}))
    with pytest.raises(FesfError) as refused:
        discover_sites(_RollCallGrid({11: "A", 33: "B"}), settings, defaults, timeout=5)  # type: ignore[arg-type]  # a Grid look-alike
    assert str(refused.value) == (
        "1 of the connected SuperNodes are registered sites, 2 needed; refused: SuperNode 33 claims site 'B', "
        "which is registered as SuperNode 22; each site must connect with its own key"
    )


def test_node_config_paths_survive_flowers_parser(tmp_path):
    data = tmp_path / "St. Mary's ward 7" / "back\\slash"
    data.mkdir(parents=True)
    args = build_parser().parse_args(["--site", "A", "--superlink", "h:1", "--data-dir", str(data), "--insecure"])
    assert parse_config_args([_node_config_argument(node_config(args))]) == {"site": "A", "data-dir": str(data)}
    quoted = tmp_path / 'say "cheese"'
    quoted.mkdir()
    args = build_parser().parse_args(["--site", "A", "--superlink", "h:1", "--data-dir", str(quoted), "--insecure"])
    with pytest.raises(ConfigError, match="contains a double quote; rename or link it"):
        node_config(args)


def test_stopping_a_flower_process_stops_its_helpers_too():
    # The leader exits on SIGTERM; its helper ignores it, as a hung SuperExec would.
    script = "(trap '' TERM; sleep 300) & trap 'exit 0' TERM; echo started; wait"
    process = FlowerProcess(["bash", "-c", script], watch=lambda line: line)
    process.failed.wait(10)
    process.stop(grace=1)
    states = subprocess.run(["ps", "-o", "stat=", "-g", str(process.pid)], capture_output=True, text=True, check=False)
    assert all(state.startswith("Z") for state in states.stdout.split()), (
        states.stdout
    )  # killed (zombies wait for init)


def test_a_flower_process_dies_with_the_process_that_started_it(fesf_home, tmp_path):
    start = (
        "from fesf_fed.deployment.processes import FlowerProcess; FlowerProcess(['sleep', '300']); print(flush=True)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", f"{start}; import time; time.sleep(300)"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert parent.stdout is not None and parent.stdout.readline() == "\n"
        assert any("sleep 300" in line for line in started_with(fesf_home).values())  # the launcher, or sleep
        parent.kill()  # SIGKILL: no clean-up of its own runs
        parent.wait()
        assert gone(lambda: started_with(fesf_home), 5) == {}
    finally:
        parent.kill()
        parent.wait()
        kill_all(started_with(fesf_home))
    # A parent that died before the launcher asked to follow it: the command never runs.
    ran = tmp_path / "ran"
    launcher = Path(follow_parent.__file__)
    result = subprocess.run([sys.executable, "-I", "-S", str(launcher), "1", "--", "touch", str(ran)], check=False)
    assert result.returncode == 1 and not ran.exists()


def test_supernode_failure_blocks_become_one_line():
    unregistered = SupernodeFailure()
    block = [
        "\x1b[91mERROR \x1b[0m:     Exit Code: 305",
        "Failed to initialize the connection to the SuperLink.",
        "[code: 2004] Failed to activate SuperNode.",
        "For more information, visit: <https://flower.ai/docs/framework/1.41/en/ref-exit-codes/305.html>",
    ]
    last = [unregistered(line) for line in block][-1]
    assert last is not None and last.startswith("the SuperLink refused this site's key")
    unknown = SupernodeFailure()
    assert [unknown(line) for line in ["Exit Code: 999", "something new", "For more information"]][-1] == (
        "flower-supernode failed (Flower exit code 999); see its output above"
    )
    assert SupernodeFailure()("For more information") is None  # only inside an error block


# --- Against a real SuperLink with TLS and SuperNode authentication -------------------------------


@pytest.fixture(scope="module")
def consortium(tmp_path_factory) -> Iterator[dict]:
    """A running SuperLink (TLS, --enable-supernode-auth) on a free port with site A registered; B is not."""
    root = tmp_path_factory.mktemp("consortium")
    keys = make_consortium_keys(root / "pki", ["127.0.0.1", "localhost"], ["A", "B"])
    flwr_home = root / "flwr"
    flwr_home.mkdir()
    port = free_port()
    _write_connection(flwr_home, f"127.0.0.1:{port}", keys.server_folder / "ca.crt")
    env = flower_env(FLWR_HOME=str(flwr_home))
    tls = keys.server_folder
    superlink = FlowerProcess(
        [
            flower_executable("flower-superlink"),
            *("--host", "127.0.0.1", "--port", str(port)),
            *("--ssl-ca-certfile", str(tls / "ca.crt"), "--ssl-certfile", str(tls / "server.pem")),
            *("--ssl-keyfile", str(tls / "server.key"), "--enable-supernode-auth"),
            "--disable-runtime-dependency-installation",
        ],
        env=env,
    )
    try:
        wait_for_port("127.0.0.1", port, superlink, timeout=60)
        node = register_site(keys.site_keys / "A.pub", "A", env)
        site_config = root / "site.yaml"
        site_config.write_text(yaml.safe_dump(TINY_SITE))
        yield {"keys": keys, "port": port, "node": node, "env": env, "config": site_config, "home": root / "fesf"}
    finally:
        superlink.stop()
    assert not superlink.running()


def _client_command(consortium: dict, site: str, *extra: str, auth_site: str | None = None) -> list[str]:
    kit = consortium["keys"].site_folder(auth_site or site)
    flags = ["--root-certificates", str(kit / "ca.crt"), "--auth-key", str(kit / "auth.key")]
    if "--root-certificates" in extra:
        flags = flags[2:]
    return [
        str(BIN / "fesf-client"),
        *("--site", site, "--superlink", f"127.0.0.1:{consortium['port']}"),
        *("--config", str(consortium["config"]), "--quiet", *flags, *extra),
    ]


def _fesf_client(consortium: dict, site: str, *extra: str, auth_site: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        _client_command(consortium, site, *extra, auth_site=auth_site),
        env={**os.environ, **consortium["env"], "FESF_HOME": str(consortium["home"])},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_registering_the_same_key_twice_is_a_clear_error(consortium):
    with pytest.raises(FesfError, match="A.pub: the SuperLink did not register it"):
        register_site(consortium["keys"].site_keys / "A.pub", "A", consortium["env"])


def test_a_site_whose_key_is_not_registered_is_refused(consortium):
    line = _error_line(_fesf_client(consortium, "B"))
    assert line == (
        "error: site B: the SuperLink refused this site's key: it is not registered; "
        "send auth.pub to the server operator"
    )


def test_a_client_without_the_consortium_ca_cannot_connect(consortium, tmp_path):
    stranger = make_consortium_keys(tmp_path / "other", ["127.0.0.1"], [])
    line = _error_line(_fesf_client(consortium, "A", "--root-certificates", str(stranger.ca_certificate)))
    assert (
        f"--root-certificates {stranger.ca_certificate}: the SuperLink at 127.0.0.1:{consortium['port']} is not verified"
        in line
    )
    # Flower itself refuses the handshake too: a SuperNode started without our CA gets no further.
    supernode = FlowerProcess(
        [
            flower_executable("flower-supernode"),
            *("--superlink", f"127.0.0.1:{consortium['port']}", "--port", str(free_port())),
            *("--auth-supernode-private-key", str(consortium["keys"].site_folder("A") / "auth.key")),
        ],
        env=consortium["env"],
        watch=SupernodeFailure(),
    )
    try:
        assert supernode.wait_for_failure_or_exit() is None
        assert supernode.failure == "the SuperLink's TLS certificate is not trusted; pass your kit's ca.crt"
    finally:
        supernode.stop()


def test_a_site_started_with_another_sites_key_is_told_so(consortium):
    line = _error_line(_fesf_client(consortium, "C", auth_site="A"))
    assert line.startswith("error: --site C: the key ") and "was made for site 'A'; use --site A" in line


def test_a_superlink_that_is_down_is_retried_a_bounded_number_of_times(consortium):
    down = free_port()
    result = _fesf_client(consortium, "A", "--superlink", f"127.0.0.1:{down}", "--retries", "3", "--retry-wait", "0.1")
    assert result.stdout.count(f"SuperLink 127.0.0.1:{down} not reachable") == 2
    assert _error_line(result).startswith(f"error: --superlink 127.0.0.1:{down}: not reachable after 3 tries")


# --- A wrapper killed with SIGKILL takes its Flower processes with it ------------------------------


def _kill_wrapper_once_running(
    command: list[str], env: dict[str, str], fesf_home: Path, names: list[str], within: float = 10
) -> None:
    """Start ``command``; once a process for each of ``names`` runs, SIGKILL it: all must be gone ``within`` s."""
    log = fesf_home / "wrapper.log"
    with log.open("w") as output:
        wrapper = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not all(any(name in line for line in started_with(fesf_home).values()) for name in names):
            assert wrapper.poll() is None, f"{command[0]} exited early: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{names} not all running: {log.read_text()[-3000:]}"
            time.sleep(0.3)
        running = started_with(fesf_home)
        os.kill(wrapper.pid, signal.SIGKILL)
        wrapper.wait()
        left = gone(lambda: started_with(fesf_home), within)
        assert left == {}, f"left running after SIGKILL of {command[0]} (were {running}): {left}"
    finally:
        kill_all(started_with(fesf_home))
        try:
            os.killpg(wrapper.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wrapper.wait()


@pytest.mark.faults
def test_a_fesf_client_killed_with_sigkill_leaves_no_supernode_running(consortium, fesf_home, tmp_path):
    env = {**os.environ, **consortium["env"], "FLWR_HOME": str(tmp_path / "flwr")}
    # SuperExec is the SuperNode's helper, which would run the ClientApps.
    _kill_wrapper_once_running(
        _client_command(consortium, "A"), env, fesf_home, ["flower-supernode", "flower-superexec"]
    )


@pytest.mark.faults
def test_a_fesf_server_killed_with_sigkill_leaves_no_superlink_or_run_running(fesf_home):
    port = free_port()
    command = [str(BIN / "fesf-server"), "run", "--insecure", "--address", f"127.0.0.1:{port}"]
    command += ["--run-config", "num-server-rounds=1 min-available-nodes=1 min-train-nodes=1 min-evaluate-nodes=1"]
    # flwr-serverapp runs once the run is submitted; it waits for sites, which never come.
    names = ["flower-superlink", "bin/flwr run", "flower-superexec", "flwr-serverapp"]
    # The SuperLink and flwr run go within a second; flwr-serverapp follows its SuperExec some 6 s later.
    _kill_wrapper_once_running(command, flower_env(), fesf_home, names, within=30)


@pytest.mark.faults
def test_a_fesf_server_stopped_with_sigterm_records_its_run_stopped_and_says_how_to_resume(fesf_home):
    port = free_port()
    command = [str(BIN / "fesf-server"), "run", "--insecure", "--address", f"127.0.0.1:{port}"]
    command += ["--run-config", "run-name='term' num-server-rounds=1 min-available-nodes=1"]
    server = subprocess.Popen(
        command, env=flower_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        # The ServerApp has opened the run and waits for sites, which never come.
        store = fesf_home / "runs" / "term" / "store.sqlite"
        deadline = time.monotonic() + 120
        while not (store.is_file() and any("flwr-serverapp" in line for line in started_with(fesf_home).values())):
            assert server.poll() is None and time.monotonic() < deadline, "the run did not start"
            time.sleep(0.3)
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=60)
    finally:
        kill_all(started_with(fesf_home))
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.communicate()
    assert server.returncode == INTERRUPTED
    assert output.splitlines()[-1] == (
        "stopped (SIGTERM); resume it with --run-config \"resume='term'\" (flwr run . or fesf-server run)"
    )
    assert json.loads((fesf_home / "runs" / "term" / "summary.json").read_text())["status"] == "stopped"
    assert gone(lambda: started_with(fesf_home), 30) == {}


@pytest.mark.faults
def test_a_site_killed_mid_run_fails_the_round_short_of_min_train_nodes_in_one_line(tmp_path):
    port, config = free_port(), tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump(TINY_SITE))
    homes = {name: tmp_path / name for name in ("server", "A", "B")}
    settings = "run-name='cut' num-server-rounds=3 local-epochs=1 round-timeout=20 min-train-nodes=2"
    server = subprocess.Popen(
        [str(BIN / "fesf-server"), "run", "--insecure", "--address", f"127.0.0.1:{port}", "--run-config", settings],
        env=flower_env(FESF_HOME=str(homes["server"])),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    sites = [
        subprocess.Popen(
            [
                *(str(BIN / "fesf-client"), "--site", site, "--insecure", "--superlink", f"127.0.0.1:{port}"),
                *("--config", str(config), "--quiet", "--once", "--retries", "10"),
            ],
            env=flower_env(FESF_HOME=str(homes[site])),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for site in ("A", "B")
    ]
    try:
        store = homes["server"] / "runs" / "cut"
        deadline = time.monotonic() + 240
        while not last_stored_round(store):
            assert server.poll() is None and time.monotonic() < deadline, "round 1 did not finish"
            time.sleep(0.5)
        (supernode,) = [pid for pid, line in started_with(homes["A"]).items() if "flower-supernode" in line]
        os.kill(supernode, signal.SIGKILL)  # site A is gone from round 2 on
        output, _ = server.communicate(timeout=240)
    finally:
        started: list[subprocess.Popen] = [server, *sites]
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for home in homes.values():
            kill_all(started_with(home))
    assert server.returncode == 1, output[-3000:]
    line = output.splitlines()[-1]
    assert line.startswith(
        "Run ended: run cut: failed, round 1 of 3: round 2: 1 of 2 sampled sites sent a train reply, 2 needed "
        "(min-train-nodes); missing A: no reply within round-timeout (20 s); resume it with "
    ), output[-3000:]
    summary = json.loads((store / "summary.json").read_text())
    assert summary["status"] == "failed" and [entry["round"] for entry in summary["history"]] == [1]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--superlink", "nowhere"], "--superlink 'nowhere': expected HOST:PORT"),
        (["--insecure"], "--insecure: cannot be combined with --root-certificates or --auth-key"),
        (["--data-dir", "/no/such/folder"], "--data-dir /no/such/folder: does not exist"),
    ],
)
def test_bad_client_flags_are_one_line_errors(consortium, flags, message):
    assert message in _error_line(_fesf_client(consortium, "A", *flags))


def test_a_missing_server_certificate_folder_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [str(BIN / "fesf-server"), "run", "--certificates", str(tmp_path)],
        env=flower_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert (
        result.stderr.strip() == f"error: --certificates {tmp_path}: ca.crt is missing; make it with fesf-server certs"
    )


def test_loopback_rehearsal_runs_two_sites_to_the_end_and_stops_everything(tmp_path):
    work = tmp_path / "loopback"
    env = flower_env()  # the script finds fesf-server and fesf-client on PATH
    script = subprocess.Popen(
        ["bash", str(REPO / "deploy" / "loopback.sh"), str(work)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = script.communicate(timeout=540)
    except subprocess.TimeoutExpired:
        os.killpg(script.pid, signal.SIGTERM)  # the script's trap stops what it started
        stdout, stderr = script.communicate(timeout=60)
        pytest.fail(f"loopback.sh timed out: {stdout[-2000:]}{stderr[-2000:]}")
    assert script.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "loopback: run finished: 2 rounds with sites A, B" in stdout
    assert stdout.rstrip().endswith("loopback: OK")
    # Flower's own helpers name the SuperLink's port rather than the work folder.
    listening = re.search(r"SuperLink listening on 127\.0\.0\.1:(\d+)", (work / "server.log").read_text())
    assert listening is not None, "server.log names no SuperLink port"
    port = listening.group(1)
    for pattern in (str(work), f"127.0.0.1:{port}"):
        left = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False).stdout.split()
        assert left == [], f"processes matching {pattern} left running: {left}"


def test_fesf_server_run_refuses_a_bad_run_setting_before_starting_the_superlink(tmp_path):
    port = free_port()
    result = subprocess.run(
        [str(BIN / "fesf-server"), "run", "--insecure", "--address", f"127.0.0.1:{port}", "--run-config", "mode='x'"],
        env=flower_env(FESF_HOME=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,  # the status is asserted by _error_line
    )
    assert _error_line(result).startswith("error: run config mode: Input should be 'plaintext'")
    assert "SuperLink listening" not in result.stdout
    assert not (tmp_path / "server").exists(), "fesf-server prepared Flower's home for a refused setting"
