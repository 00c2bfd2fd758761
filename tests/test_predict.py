"""`fesf predict`: a site diagnoses new scans with a run's global model, sending only their surrogates.

The session's finished tiny federation (site-1 took part, so its IQEM generator is
trained and cached) is copied, and the real dashboard serves the copies on a free local port,
behind a WSGI recorder that keeps every request's address, headers and body: what
left the site.
"""

import csv
import io
import json
import os
import shutil
import socket
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image
from werkzeug.serving import make_server

import fesf_fed.build as build_module
import fesf_fed.cli as cli_module
from fesf_fed.build import site_pipeline
from fesf_fed.config import load_config
from fesf_fed.data.phantom import phantom_dataset
from fesf_fed.federation.settings import parse_run_settings, simulated_site_configs
from fesf_fed.hosts import assign_hosts
from fesf_fed.pixels import tensor_to_uint8, to_unit_float
from server.dashboard.app import create_app
from tests.conftest import FinishedRun
from tests.simulation import TINY_RUN, run_config

#: Names that exist only at the site: no request may carry them.
SCANS_FOLDER = "ward7-new-scans"
PATIENT = "mrn-0048213"
TOKEN = "t" * 32


@dataclass(frozen=True)
class Request:
    """One request as the server received it."""

    method: str
    address: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    """WSGI middleware that records every request before the app answers it."""

    app: Any
    requests: list[Request] = field(default_factory=list)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        headers = {key: str(value) for key, value in environ.items() if key.startswith(("HTTP_", "CONTENT_"))}
        address = environ.get("REQUEST_URI") or environ["PATH_INFO"] + "?" + environ.get("QUERY_STRING", "")
        self.requests.append(Request(environ["REQUEST_METHOD"], address, headers, body))
        return self.app(environ, start_response)

    def posts(self) -> list[Request]:
        return [request for request in self.requests if request.method == "POST"]


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve a WSGI app on 127.0.0.1 and a free port in a thread; yield its address."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join()


@dataclass(frozen=True)
class Federation:
    home: Path
    runs: Path
    run: str
    site_config: Path
    scans: Path
    #: Each scan's id (its path relative to ``scans``) and plaintext, uint8 (1, H, W), in file order.
    plaintext: dict[str, np.ndarray]
    server: str
    recorder: Recorder


def _copy_run(run: Path, copy: Path, mode: str | None = None, model: bool = True) -> None:
    """A copy of ``run`` at ``copy``, with another training mode or without its model."""
    shutil.copytree(run, copy)
    with sqlite3.connect(copy / "store.sqlite") as store:
        config = json.loads(store.execute("SELECT value FROM info WHERE key = 'config'").fetchone()[0])
        config["mode"] = mode or config["mode"]
        store.execute("UPDATE info SET value = ? WHERE key = 'config'", (json.dumps(config),))
    store.close()
    if not model:
        shutil.rmtree(copy / "checkpoints")


def _write_scans(folder: Path, per_class: int, seed: int) -> dict[str, np.ndarray]:
    data = phantom_dataset(per_class, 16, seed)
    scans = {}
    for image, image_id in zip(data.images, data.ids):
        relative = f"{PATIENT}/{image_id.replace('/', '-')}.png"
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0]).save(folder / relative)
        scans[relative] = image
    return dict(sorted(scans.items()))


@pytest.fixture(scope="module")
def federation(finished_run: FinishedRun, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    """The finished 2-round x_su_prime run (and edited copies of it), served by the dashboard."""
    runs = tmp_path_factory.mktemp("runs")
    run = finished_run.folder.name
    _copy_run(finished_run.folder, runs / run)
    _copy_run(finished_run.folder, runs / "plaintext-run", mode="plaintext")
    _copy_run(finished_run.folder, runs / "no-model-run", model=False)
    # Site-1's own config, exactly as the simulation built it, so its cache is hit.
    site_config = tmp_path_factory.mktemp("site") / "site-1.yaml"
    site = simulated_site_configs(*parse_run_settings(run_config(**TINY_RUN)))[0]
    site_config.write_text(yaml.safe_dump(site.model_dump(mode="json")))
    scans = tmp_path_factory.mktemp(SCANS_FOLDER)
    plaintext = _write_scans(scans, per_class=3, seed=5)
    recorder = Recorder(create_app(runs).server)
    with serving(recorder) as server:
        yield Federation(finished_run.home, runs, run, site_config, scans, plaintext, server, recorder)


@pytest.fixture
def site(federation: Federation, monkeypatch: pytest.MonkeyPatch) -> Federation:
    """Work as site-1 in the federation's FESF_HOME, with the recorder emptied and wide output."""
    monkeypatch.setenv("FESF_HOME", str(federation.home))
    monkeypatch.setattr(cli_module.console, "width", 160)
    monkeypatch.delenv("FESF_DASHBOARD_TOKEN", raising=False)
    federation.recorder.requests.clear()
    return federation


def predict(site: Federation, *args: str, run: str | None = None, images: Path | None = None) -> int:
    return cli_module.main(
        [
            "predict",
            "--quiet",
            "--run",
            run or site.run,
            "--images",
            str(images or site.scans),
            "--server",
            site.server,
            "--config",
            str(site.site_config),
            *args,
        ]
    )


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_predict_diagnoses_every_scan_and_sends_only_surrogates(
    site: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_rebuild(*args: object, **kwargs: object) -> None:
        raise AssertionError("site-1 took part in the run: its surrogates and G must come from the cache")

    monkeypatch.setattr(build_module, "_load_inputs", no_rebuild)
    output = tmp_path / "results" / "predictions.csv"
    assert predict(site, "--output", str(output)) == 0
    stdout = capsys.readouterr().out
    # The run's model: that of its best validation round (best.pt), which the summary names.
    chosen = json.loads((site.runs / site.run / "summary.json").read_text())["final"]["round"]
    assert f"6 scans diagnosed from their x_su_prime surrogates by the global model of round {chosen}" in stdout
    for image_id in site.plaintext:
        assert image_id.rsplit("/", 1)[1] in stdout

    with output.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["file"] for row in rows] == list(site.plaintext)
    for row in rows:
        probabilities = {name: float(row[name]) for name in ("normal", "lesion")}
        assert row["class"] in probabilities and probabilities[row["class"]] == max(probabilities.values())
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert output.stat().st_mode & 0o777 == 0o600

    # What left the site: one GET for the run, then one surrogate PNG per scan and nothing else.
    requests = site.recorder.requests
    assert [request.method for request in requests] == ["GET"] + ["POST"] * len(site.plaintext)
    assert requests[0].address == f"/api/runs/{site.run}"
    # The surrogates are site-1's x_su_prime stage: its hosts (keyed by the file ids), its G.
    pipeline, bank, key = site_pipeline(load_config(site.site_config), channels=1)
    plain = np.stack(list(site.plaintext.values()))
    stages = pipeline(to_unit_float(plain, pipeline.device), assign_hosts(list(site.plaintext), len(bank), key))
    expected = tensor_to_uint8(stages["x_su_prime"])
    secrets = [SCANS_FOLDER, PATIENT, str(site.scans), *(Path(image_id).stem for image_id in site.plaintext)]
    file_bytes = [(site.scans / image_id).read_bytes() for image_id in site.plaintext]
    for request, surrogate, image in zip(site.recorder.posts(), expected, plain):
        assert request.address == f"/api/runs/{site.run}/diagnose"
        assert request.headers["CONTENT_TYPE"] == "image/png"
        assert request.body not in file_bytes
        received = np.asarray(Image.open(io.BytesIO(request.body)))[np.newaxis]
        np.testing.assert_array_equal(received, surrogate)
        assert np.abs(received.astype(int) - image).mean() > 10  # a surrogate, not the plaintext
    for request in requests:
        sent = (request.address + json.dumps(request.headers)).encode().lower() + request.body.lower()
        for secret in secrets:
            assert secret.lower().encode() not in sent, f"{secret!r} left the site in {request.address}"
        for image in plain:  # no run of 32 plaintext pixels, raw, anywhere
            pixels = image.reshape(-1)
            for start in range(0, pixels.size - 32, 16):
                if len(np.unique(pixels[start : start + 32])) >= 8:
                    assert pixels[start : start + 32].tobytes() not in request.body


def test_a_plaintext_run_is_refused_before_anything_is_sent(
    site: Federation, capsys: pytest.CaptureFixture[str]
) -> None:
    assert predict(site, run="plaintext-run") == 2
    assert "run plaintext-run was trained on plaintext" in _one_line_error(capsys)
    assert site.recorder.posts() == []


def test_a_run_without_a_model_is_refused(site: Federation, capsys: pytest.CaptureFixture[str]) -> None:
    assert predict(site, run="no-model-run") == 2
    assert "has no global model yet" in _one_line_error(capsys)
    assert site.recorder.posts() == []


def test_an_unknown_run_passes_the_services_message_on(site: Federation, capsys: pytest.CaptureFixture[str]) -> None:
    assert predict(site, run="no-such-run") == 2
    assert "run no-such-run: no run 'no-such-run'" in _one_line_error(capsys)


def test_a_site_config_of_another_image_size_is_refused(site: Federation, capsys: pytest.CaptureFixture[str]) -> None:
    assert predict(site, "--set", "data.image_size=32") == 2
    error = _one_line_error(capsys)
    assert "data.image_size is 32" in error and "takes 16 px" in error
    assert site.recorder.posts() == []


def test_an_unreachable_server_is_one_clear_line(site: Federation, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    code = cli_module.main(["predict", "--run", site.run, "--images", str(site.scans), "--server", closed])
    assert code == 2
    error = _one_line_error(capsys)
    assert closed in error and "fesf-dashboard" in error and "--server" in error


def test_a_corrupt_file_is_skipped_and_listed(
    site: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scans = _write_scans(tmp_path, per_class=1, seed=6)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    assert predict(site, images=tmp_path) == 0
    stdout = capsys.readouterr().out
    assert "Skipped files (1)" in stdout and "broken.png" in stdout
    assert len(site.recorder.posts()) == len(scans)


def test_unusable_entries_are_skipped_one_line_each_and_never_sent(
    site: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scans = _write_scans(tmp_path, per_class=1, seed=6)
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(tmp_path / os.fsdecode(b"scan-\xff.png"))
    (tmp_path / "gone.png").symlink_to(tmp_path / "missing.png")
    (tmp_path / "report.png").write_text("a text file, not a scan")
    (tmp_path / "notes.txt").write_text("not an image file: ignored")
    assert predict(site, images=tmp_path) == 0
    stdout = capsys.readouterr().out
    assert "Skipped files (3)" in stdout
    assert "scan-\\xff.png" in stdout and "not valid UTF-8; rename it" in stdout
    assert "gone.png" in stdout and "broken symbolic link" in stdout
    assert "report.png" in stdout and "notes.txt" not in stdout
    assert len(site.recorder.posts()) == len(scans)


def test_a_folder_of_only_unusable_entries_is_one_line(
    site: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "gone.png").symlink_to(tmp_path / "missing.png")
    assert predict(site, images=tmp_path) == 2
    error = _one_line_error(capsys)
    assert "none of its 1 image file(s) can be used; the first, gone.png: broken symbolic link" in error
    assert site.recorder.posts() == []


def test_an_empty_folder_is_an_error(site: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert predict(site, images=tmp_path) == 2
    assert f"{tmp_path}: no image files" in _one_line_error(capsys)


def test_a_token_is_sent_and_service_errors_name_the_file(
    site: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_scans(tmp_path, per_class=1, seed=6)
    recorder = Recorder(create_app(site.runs, token=TOKEN, max_upload=64).server)
    with serving(recorder) as server:
        assert predict(site, "--server", server, images=tmp_path) == 2
        assert "set FESF_DASHBOARD_TOKEN" in _one_line_error(capsys)

        monkeypatch.setenv("FESF_DASHBOARD_TOKEN", TOKEN)
        assert predict(site, "--server", server, images=tmp_path) == 2  # every surrogate is over 64 bytes
    error = _one_line_error(capsys)
    assert error.startswith(f"error: {PATIENT}/lesion-0000.png: the upload is larger than")
    assert recorder.requests[-1].headers["HTTP_AUTHORIZATION"] == f"Bearer {TOKEN}"
