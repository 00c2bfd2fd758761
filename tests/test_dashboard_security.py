"""The dashboard's reliability and security (issue 18): decompression bombs, damaged run stores,
the Host header, the security headers, and error bodies that give nothing of the server away.

Every test makes its own small run in its own FESF_HOME (no federation is run). Servers bind
127.0.0.1 on free ports, and every process a test starts is stopped by its PID (process group).
"""

import http.client
import io
import json
import logging
import struct
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image

from fesf_fed.deployment.processes import FlowerProcess, flower_env, free_port, wait_for_port
from fesf_fed.federation import protocol
from fesf_fed.models import build_model
from server.dashboard.access import HostCheck, parse_allowed_hosts
from server.dashboard.app import create_app
from server.dashboard.cli import main as dashboard_main
from server.dashboard.diagnosis import DiagnosisError, decode_png
from server.run_store import RunFolder, runs_folder
from tests.browser import CHROMIUM, chromium

RUN = "secure-run"
SIZE = 16
TOKEN = "t" * 32


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _declaring(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header declares ``width`` x ``height`` grey pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _surrogate() -> bytes:
    return _png(np.random.default_rng(0).integers(0, 256, (SIZE, SIZE), dtype=np.uint8))


@pytest.fixture
def run() -> Path:
    """A finished 2-round x_su' run of one site with a model, as the federation stores one."""
    stored = RunFolder(RUN)
    stored.set_info(
        config={"mode": "x_su_prime", "model": "smallcnn", "strategy": "fedavg"},
        classes=["no-tumour", "tumour"],
        input={"channels": 1, "image-size": SIZE},
        status="finished",
        rounds=2,
        started="2026-01-01T00:00:00+00:00",
    )
    stored.set_site("site-1", {protocol.TRAIN_EXAMPLES: 20, protocol.VAL_EXAMPLES: 5, protocol.TEST_EXAMPLES: 8})
    for server_round in (1, 2):
        figures = {"accuracy": 0.5 + server_round / 10, "f1": 0.5, "auroc": 0.6, "loss": 0.7}
        stored.record(server_round, "evaluate", "global", figures)
        stored.record(server_round, "evaluate", "site-1", figures)
        stored.record(server_round, "validation", "global", {"f1": 0.5 + server_round / 10, "examples": 5})
        stored.record_confusion(server_round, "evaluate", "global", [[3, 1], [1, 3]])
    model = build_model("smallcnn", 2, 1, image_size=SIZE)
    stored.save_checkpoint(2, {"arrays": model.state_dict(), "strategy": {}}, keep=1)
    stored.close()
    return runs_folder() / RUN


@pytest.fixture
def client(run: Path) -> FlaskClient:
    return create_app(runs_folder()).server.test_client()


def _diagnose(client: FlaskClient, data: bytes, name: str = RUN) -> tuple[int, str]:
    response = client.post(f"/api/runs/{name}/diagnose", data=data, content_type="image/png")
    return response.status_code, response.get_json().get("error", "")


def _one_line(text: str) -> str:
    assert text and "\n" not in text.strip() and "Traceback" not in text, text
    return text


def _no_tracebacks(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The dashboard's log lines: each must be one line without a traceback."""
    records = [record for record in caplog.records if record.levelno >= logging.WARNING]
    for record in records:
        assert record.exc_info is None, record.getMessage()
        _one_line(record.getMessage())
    assert "Traceback" not in capsys.readouterr().err
    return [record.getMessage() for record in records]


# --- 1. decompression bombs --------------------------------------------------------------------


@pytest.mark.parametrize("width, height", [(10000, 10000), (100000, 100000), (4097, 4096), (1, 2**24 + 1)])
def test_a_small_png_declaring_huge_dimensions_is_413_before_anything_is_decoded(
    client, width, height, monkeypatch, caplog, capsys
):
    bomb = _declaring(width, height)
    assert len(bomb) < 100

    def never(*args, **kwargs):
        raise AssertionError("the image was handed to Pillow")

    monkeypatch.setattr(Image, "open", never)  # the header alone must settle it
    status, error = _diagnose(client, bomb)
    assert status == 413
    assert _one_line(error) == f"the image has {width}x{height} pixels; at most {4096 * 4096} (4096x4096)"
    assert _no_tracebacks(caplog, capsys) == []


def test_the_largest_allowed_size_still_reaches_the_model_and_bombs_are_refused_by_the_decoder_too():
    with pytest.raises(DiagnosisError) as refused:
        decode_png(_declaring(10000, 10000), 1)
    assert refused.value.status == 413
    # 4096x4096 declared, with a truncated body: allowed by size, so it is decoded, and refused as corrupt.
    with pytest.raises(DiagnosisError) as corrupt:
        decode_png(_declaring(4096, 4096), 1)
    assert corrupt.value.status == 400 and "cannot be decoded" in corrupt.value.message


# --- 2. a damaged run store --------------------------------------------------------------------


def _damage(run: Path) -> None:
    (run / "store.sqlite").write_bytes(b"this is not a database\n" * 200)


@pytest.mark.parametrize(
    "method, address",
    [
        ("GET", f"/api/runs/{RUN}"),
        ("GET", f"/api/runs/{RUN}/metrics.csv"),
        ("GET", f"/api/runs/{RUN}/metrics.json"),
        ("POST", f"/api/runs/{RUN}/diagnose"),
    ],
)
def test_a_damaged_store_makes_the_api_answer_503_naming_the_run_with_one_log_line(
    client, run, method, address, caplog, capsys
):
    _damage(run)
    caplog.set_level(logging.INFO)
    response = client.open(address, method=method, data=_surrogate(), content_type="image/png")
    assert response.status_code == 503
    error = _one_line(response.get_json()["error"])
    assert error.startswith(f"run {RUN}'s store cannot be read (file is not a database)")
    assert str(runs_folder()) not in error and "/" not in error
    (logged,) = _no_tracebacks(caplog, capsys)
    assert address in logged and error in logged
    # The other runs (and the list, which names this one unreadable) are still served.
    (listed,) = client.get("/api/runs").get_json()
    assert listed["name"] == RUN and listed["status"] == "unreadable (file is not a database)"


def _render(client: FlaskClient, pathname: str, search: str = "") -> dict:
    """What the page callback draws at ``pathname``, as the browser asks Dash for it."""
    response = client.post(
        "/_dash-update-component",
        json={
            "output": "..page.children...shown.data..",
            "outputs": [{"id": "page", "property": "children"}, {"id": "shown", "property": "data"}],
            "inputs": [
                {"id": "url", "property": "pathname", "value": pathname},
                {"id": "url", "property": "search", "value": search},
                {"id": "tick", "property": "n_intervals", "value": None},
            ],
            "state": [{"id": "shown", "property": "data", "value": None}],
            "changedPropIds": ["url.pathname"],
        },
    )
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    return response.get_json()


def test_a_damaged_store_makes_the_run_page_show_the_error_for_that_run(client, run, caplog, capsys):
    assert '"run-headline"' in json.dumps(_render(client, f"/runs/{RUN}"))
    _damage(run)
    page = json.dumps(_render(client, f"/runs/{RUN}"))
    assert f"Run {RUN} cannot be read" in page and "file is not a database" in page
    assert str(runs_folder()) not in page
    compared = json.dumps(_render(client, "/compare", f"?runs={RUN},{RUN}"))
    assert f"Run {RUN} cannot be read" in compared
    logged = _no_tracebacks(caplog, capsys)
    assert len(logged) == 2 and all(f"run {RUN}'s store cannot be read" in line for line in logged)


def test_a_damaged_checkpoint_is_a_one_line_503_too(client, run, caplog, capsys):
    for checkpoint in (run / "checkpoints").glob("*.pt"):
        checkpoint.write_bytes(b"not a checkpoint")
    status, error = _diagnose(client, _surrogate())
    assert status == 503
    assert _one_line(error).startswith(f"run {RUN}'s model cannot be loaded (")
    assert len(_no_tracebacks(caplog, capsys)) == 1


# --- 3. the Host header ------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["/", "/api/runs", "/_dash-layout", "/assets/style.css", f"/api/runs/{RUN}"])
def test_a_request_for_another_host_is_400_before_anything_else(run, address):
    # With a token too: the host is checked first, so a rebound page learns nothing, not even a 401.
    for client in (
        create_app(runs_folder()).server.test_client(),
        create_app(runs_folder(), token=TOKEN).server.test_client(),
    ):
        response = client.get(address, headers={"Host": "attacker.example:8050"})
        assert response.status_code == 400
        body = response.get_data(as_text=True)
        if address.startswith("/api/"):
            body = response.get_json()["error"]
        else:
            assert response.mimetype == "text/plain"
        assert _one_line(body.strip()) == (
            "this dashboard does not answer to the host name attacker.example; "
            "if that is its name, start it with --allowed-hosts attacker.example"
        )


def test_a_loopback_dashboard_answers_to_its_address_and_localhost_names(client):
    for host in ("127.0.0.1:8050", "localhost:8050", "LOCALHOST", "[::1]:8050", "localhost."):
        assert client.get("/api/runs", headers={"Host": host}).status_code == 200, host
    for host in ("127.0.0.2", "localhost.attacker.example", "<script>", "10.0.0.1:8050"):
        response = client.get("/api/runs", headers={"Host": host})
        assert response.status_code == 400, host
        assert "<" not in response.get_data(as_text=True)  # what is echoed is a host name or nothing


def test_allowed_hosts_add_names_and_the_bound_address_is_always_allowed(run):
    served = create_app(runs_folder(), host="10.1.2.3", allowed_hosts=["dash.example.org"]).server.test_client()
    for host, status in [
        ("10.1.2.3:8050", 200),
        ("dash.example.org", 200),
        ("Dash.Example.Org:8443", 200),
        ("localhost", 400),  # not on loopback
        ("evil.example.org", 400),
    ]:
        assert served.get("/api/runs", headers={"Host": host}).status_code == status, host
    everywhere = HostCheck("0.0.0.0", ["dash.example.org"])
    assert everywhere.allows("192.168.4.7:8050") and everywhere.allows("[fe80::1]:8050")  # addresses cannot rebind
    assert everywhere.allows("localhost") and everywhere.allows("dash.example.org")
    assert not everywhere.allows("rebind.attacker.example")
    assert HostCheck("::1").allows("[::1]:8050") and HostCheck("::1").allows("localhost")


def test_the_allowed_hosts_option_takes_names_and_refuses_urls_and_ports(monkeypatch, capsys):
    assert parse_allowed_hosts("dash.example.org, Other.Example.,10.0.0.5,[::1]") == [
        "dash.example.org",
        "other.example",
        "10.0.0.5",
        "::1",
    ]
    monkeypatch.delenv("FESF_DASHBOARD_TOKEN", raising=False)
    for value in ("https://dash.example.org", "dash.example.org:8443", " , "):
        assert dashboard_main(["--runs", str(runs_folder()), "--allowed-hosts", value]) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: --allowed-hosts") and error.count("\n") == 1


# --- 4. security headers -----------------------------------------------------------------------


def _assert_secure(response) -> None:
    headers = response.headers
    policy = {
        directive.split()[0]: directive.split()[1:] for directive in headers["Content-Security-Policy"].split("; ")
    }
    assert policy["default-src"] == ["'none'"] and policy["frame-ancestors"] == ["'none'"]
    assert policy["script-src"][0] == "'self'"
    assert all(source.startswith("'sha256-") for source in policy["script-src"][1:])  # no unsafe-inline or eval
    assert policy["connect-src"] == ["'self'"] and policy["base-uri"] == ["'none'"]
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"


def test_every_response_carries_the_security_headers(run):
    client = create_app(runs_folder(), max_upload=100).server.test_client()
    page = client.get("/")
    script = next(
        line.split('src="')[1].split('"')[0]
        for line in page.get_data(as_text=True).splitlines()
        if "_dash-component-suites" in line
    )
    responses = [
        page,
        client.get("/api/runs"),
        client.get("/api/runs/nope"),  # 404
        client.get("/_dash-layout"),
        client.get(script),
        client.get("/assets/style.css"),
        client.get("/", headers={"Host": "attacker.example"}),  # 400
        client.post(f"/api/runs/{RUN}/diagnose", data=b"x" * 200, content_type="image/png"),  # 413
        create_app(runs_folder(), token=TOKEN).server.test_client().get("/"),  # 401
    ]
    assert [response.status_code for response in responses] == [200, 200, 404, 200, 200, 200, 400, 413, 401]
    for response in responses:
        _assert_secure(response)


@pytest.fixture
def browser_page():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: browser tests need Debian's chromium (make test installs it)")
    with chromium() as opened:
        yield opened
    assert opened.outside == [], f"the page fetched from outside this machine: {opened.outside}"


# --- the command, as a user starts it ----------------------------------------------------------


@dataclass
class Served:
    url: str
    port: int
    output: io.StringIO


@contextmanager
def _fesf_dashboard(*args: str) -> Iterator[Served]:
    """``fesf-dashboard --runs RUNS ARGS`` on a free 127.0.0.1 port; stopped (its process group) on exit."""
    port = free_port()
    output = io.StringIO()
    command = [str(Path(sys.executable).with_name("fesf-dashboard")), "--runs", str(runs_folder())]
    process = FlowerProcess([*command, "--port", str(port), *args], env=flower_env(), sink=output)
    try:
        wait_for_port("127.0.0.1", port, process, timeout=90)
        yield Served(f"http://127.0.0.1:{port}", port, output)
    finally:
        process.stop(grace=10)


def _get(port: int, address: str, host: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.putrequest("GET", address, skip_host=True)
        connection.putheader("Host", host)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_the_served_dashboard_checks_hosts_and_logs_a_damaged_store_in_one_line(run, browser_page):
    with _fesf_dashboard("--allowed-hosts", "dash.example.org") as served:
        assert _get(served.port, "/api/runs", f"127.0.0.1:{served.port}")[0] == 200
        assert _get(served.port, "/api/runs", "dash.example.org")[0] == 200
        status, body = _get(served.port, "/", f"rebind.attacker.example:{served.port}")
        assert status == 400 and _one_line(body).startswith("this dashboard does not answer to the host name")

        # In a real browser, the page works under the policy: Dash's inline script runs (by its hash),
        # the plots draw, nothing breaks the policy, and an injected inline script is blocked.
        page = browser_page.page
        violations: list[str] = []
        page.on(
            "console", lambda message: violations.append(message.text) if "Content Security" in message.text else None
        )
        page.add_init_script(
            "document.addEventListener('securitypolicyviolation', e => window.__violations = "
            "(window.__violations || []).concat([e.violatedDirective]))"
        )
        page.goto(f"{served.url}/runs/{RUN}")
        page.wait_for_selector("#run-headline")
        page.wait_for_selector(".js-plotly-plot .main-svg")
        assert page.evaluate("window.__violations || []") == [] and violations == []
        page.evaluate(
            "() => { const s = document.createElement('script'); s.textContent = 'window.__injected = 1';"
            " document.body.appendChild(s); }"
        )
        page.wait_for_function("(window.__violations || []).length > 0")
        assert page.evaluate("window.__violations") == ["script-src-elem"]
        assert page.evaluate("window.__injected === undefined")

        _damage(run)
        status, body = _get(served.port, f"/api/runs/{RUN}", f"127.0.0.1:{served.port}")
        assert status == 503 and json.loads(body)["error"].startswith(f"run {RUN}'s store cannot be read")
        time.sleep(0.5)  # the log line is written as the answer goes out
    log = served.output.getvalue()
    assert "Traceback" not in log
    # The API's line; the open page, redrawn as the store changed, may have logged its own line too.
    (line,) = [line for line in log.splitlines() if f"GET /api/runs/{RUN}:" in line]
    assert line.endswith(
        f"GET /api/runs/{RUN}: run {RUN}'s store cannot be read (file is not a database); the run folder may be damaged"
    )
    assert all("store cannot be read" in line for line in log.splitlines() if "ERROR" in line)


# --- 5. error bodies name the run, never the server's folders or Python objects ------------------


def test_error_bodies_name_the_run_not_the_runs_folder_or_python_objects(client, run):
    response = client.get("/api/runs/nope")
    assert response.status_code == 404
    error = _one_line(response.get_json()["error"])
    assert error.startswith("no run 'nope'") and str(runs_folder()) not in error
    # A PNG whose first chunk is broken: Pillow's message quotes the in-memory file it was given.
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", SIZE, SIZE, 8, 0, 0, 0, 0))
    broken = b"\x89PNG\r\n\x1a\n" + header[:-4] + b"\0\0\0\0" + _chunk(b"IEND", b"")
    status, error = _diagnose(client, broken)
    assert status == 400 and _one_line(error).startswith("the PNG cannot be decoded")
    assert " at 0x" not in error and "<" not in error and "BytesIO" not in error
    page = json.dumps(_render(client, "/runs/nope"))
    assert "no run 'nope'" in page and str(runs_folder()) not in page


def test_a_script_path_outside_dashs_packages_is_404_without_a_traceback(client, caplog):
    response = client.get("/_dash-component-suites/../../../etc/passwd")
    assert response.status_code == 404 and response.get_json() == {"error": "no such file"}
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "Traceback" not in caplog.text
