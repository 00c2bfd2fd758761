"""Site-side diagnosis (paper section 2.4): new scans become surrogates here, a run's global model classifies them.

``fesf predict`` converts every scan in a folder through the site's own pipeline (its
host bank, site key and trained IQEM generator G) to the surrogate stage the run was
trained on, and sends each surrogate, as a PNG request body, to the diagnosis service
(``fesf-dashboard``). Nothing else leaves the site: no plaintext, no file name or path
(not in the address, the headers or the body). A run trained on plaintext is refused
before any image is converted.
"""

import csv
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import numpy as np
import requests
from PIL import Image
from tqdm.auto import tqdm

from fesf_fed.atomic import atomic_writer
from fesf_fed.build import build_surrogates, site_pipeline
from fesf_fed.config import SURROGATE_KINDS, SiteConfig
from fesf_fed.data import IMAGE_SUFFIXES, SkippedFile, UnreadableImage, to_channels
from fesf_fed.data.sources import decode_files, image_files, no_usable_image
from fesf_fed.errors import ConfigError, DataError, FesfError
from fesf_fed.federation.run_summary import ModelInput
from fesf_fed.hosts import assign_hosts
from fesf_fed.pixels import tensor_to_uint8, to_unit_float

#: The dashboard's access token, as ``fesf-dashboard`` reads it.
TOKEN_VARIABLE = "FESF_DASHBOARD_TOKEN"
#: Seconds to connect and to wait for an answer (the first diagnosis of a run loads its model).
TIMEOUT = (10.0, 120.0)


@dataclass(frozen=True)
class RemoteRun:
    """A run of the diagnosis service: how it was trained and what its global model takes."""

    name: str
    mode: str
    classes: list[str]
    channels: int
    image_size: int


@dataclass(frozen=True)
class Prediction:
    """The service's answer for one scan; ``file`` is its path relative to the folder (never sent)."""

    file: str
    label: str
    probabilities: dict[str, float]
    round: int


@dataclass
class Predictions:
    """Every scan's prediction, in file order, and the files that could not be decoded."""

    run: RemoteRun
    predictions: list[Prediction] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)


def open_session(server: str, root_certificates: Path | None = None) -> requests.Session:
    """A session for the service at ``server``: the access token from the environment, the CA to trust.

    Raises
    ------
    ConfigError
        For an address that is not http(s) or a certificate file that does not exist.
    """
    address = urlsplit(server)
    if address.scheme not in ("http", "https") or not address.netloc:
        raise ConfigError(f"--server {server!r}: give the service's address, e.g. http://127.0.0.1:8050")
    if root_certificates is not None and not root_certificates.is_file():
        raise ConfigError(f"--root-certificates {root_certificates}: file not found; give the CA bundle (PEM)")
    session = requests.Session()
    session.verify = str(root_certificates) if root_certificates else True
    if token := os.environ.get(TOKEN_VARIABLE):
        session.headers["Authorization"] = f"Bearer {token}"
    return session


def _request(
    session: requests.Session, server: str, method: str, path: str, what: str, **kwargs: Any
) -> dict[str, Any]:
    """Send one request to the service; its JSON answer, or a one-line FesfError that starts with ``what``."""
    try:
        # verify per request: requests lets REQUESTS_CA_BUNDLE override a session's own.
        response = session.request(method, server.rstrip("/") + path, timeout=TIMEOUT, verify=session.verify, **kwargs)
    except requests.exceptions.SSLError:
        raise FesfError(
            f"{server}: its TLS certificate cannot be verified; pass the CA that signed it with --root-certificates"
        ) from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        problem = "no answer in time" if isinstance(exc, requests.Timeout) else "cannot connect"
        raise FesfError(
            f"the diagnosis service at {server} is unreachable ({problem}); start it with `fesf-dashboard` "
            "or check --server"
        ) from None
    except requests.RequestException as exc:
        raise ConfigError(f"--server {server}: {exc}") from None
    if response.status_code == 401:
        raise FesfError(f"the diagnosis service at {server} needs its access token (401); set {TOKEN_VARIABLE} to it")
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not response.ok or not isinstance(answer, dict):
        message = answer.get("error") if isinstance(answer, dict) else None
        raise FesfError(f"{what}: {message or f'unexpected answer from {server} (HTTP {response.status_code})'}")
    return answer


def fetch_run(session: requests.Session, server: str, run: str) -> RemoteRun:
    """Ask the service for ``run`` and check that scans may be diagnosed with it.

    Raises
    ------
    FesfError
        For an unknown run, one trained on plaintext (plaintext never leaves the site)
        or one without a global model yet.
    """
    details = _request(session, server, "GET", f"/api/runs/{quote(run, safe='')}", f"run {run}")
    mode = details.get("mode")
    if mode == "plaintext":
        raise FesfError(
            f"run {run} was trained on plaintext, which never leaves the site; choose a run trained on surrogates"
        )
    if not details.get("has_model") or not details.get("input"):
        raise FesfError(f"run {run} has no global model yet; wait for its first round to finish")
    if mode not in SURROGATE_KINDS:
        raise FesfError(f"run {run} has training mode {mode!r}; fesf predict knows {', '.join(SURROGATE_KINDS)}")
    try:
        model_input = ModelInput.from_json(details["input"])
    except ValueError:
        raise FesfError(
            f"{server}: run {run}'s model input is not channels and image-size; update fesf-dashboard"
        ) from None
    return RemoteRun(run, mode, list(details["classes"]), model_input.channels, model_input.image_size)


def convert_folder(
    config: SiteConfig,
    folder: Path,
    files: list[Path],
    channels: int,
    stage: str,
    skipped: list[SkippedFile],
    progress: bool = False,
) -> Iterator[tuple[str, np.ndarray]]:
    """Turn image files into surrogates with the site's trained pipeline.

    Parameters
    ----------
    config : SiteConfig
        The site's config; its surrogates must be built (:func:`~fesf_fed.build.build_surrogates`).
    folder : Path
        The folder of the files: a file's path relative to it is its id for the host assignment.
    files : list of Path
        Usable image files under ``folder`` (:func:`~fesf_fed.data.sources.image_files`).
    channels : int
        Channels of the site's surrogates (those its G was trained on).
    stage : str
        ``"x_sy"``, ``"x_su"`` or ``"x_su_prime"``.
    skipped : list of SkippedFile
        Files that cannot be decoded are appended here instead of stopping the conversion.
    progress : bool
        Show a progress bar.

    Yields
    ------
    tuple of (str, np.ndarray)
        The file's id and its surrogate, uint8 ``(channels, size, size)``, batch by batch.
    """
    pipeline, bank, site_key = site_pipeline(config, channels)
    for start in tqdm(range(0, len(files), config.pipeline.batch_size), desc="converting", disable=not progress):
        batch = files[start : start + config.pipeline.batch_size]
        ids, images = [], []
        for path, decoded in zip(batch, decode_files(batch, config.data.image_size, progress=False)):
            image_id = path.relative_to(folder).as_posix()
            if isinstance(decoded, UnreadableImage):
                skipped.append(SkippedFile(image_id, decoded.reason))
            else:
                ids.append(image_id)
                images.append(to_channels(decoded, channels))
        if ids:
            plain = to_unit_float(np.stack(images), pipeline.device)
            surrogates = tensor_to_uint8(pipeline(plain, assign_hosts(ids, len(bank), site_key))[stage])
            yield from zip(ids, surrogates)


def surrogate_png(surrogate: np.ndarray) -> bytes:
    """Encode a uint8 ``(C, H, W)`` surrogate as PNG bytes, in memory and without metadata."""
    pixels = surrogate[0] if surrogate.shape[0] == 1 else np.moveaxis(surrogate, 0, -1)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def predict_folder(
    config: SiteConfig,
    folder: Path,
    run: str,
    server: str,
    root_certificates: Path | None = None,
    progress: bool = False,
) -> Predictions:
    """Diagnose every scan under ``folder`` with run ``run``'s global model, sending only surrogates.

    Parameters
    ----------
    config : SiteConfig
        The site's config, as for ``fesf surrogates``: its surrogates are built (or
        reused) so that its trained G converts the scans.
    folder : Path
        The scans (any supported image files, searched recursively).
    run : str
        The run's name in the diagnosis service.
    server : str
        The service's address, e.g. ``http://127.0.0.1:8050``.
    root_certificates : Path, optional
        CA bundle (PEM) that verifies an HTTPS ``server``.
    progress : bool
        Show progress bars.

    Returns
    -------
    Predictions
        One prediction per decodable file, and the files skipped.

    Raises
    ------
    FesfError
        One line: the service unreachable or refusing (its message with the file),
        a plaintext run, a site config that does not match the run, no usable scan.
    """
    session = open_session(server, root_certificates)
    remote = fetch_run(session, server, run)
    if config.data.image_size != remote.image_size:
        raise ConfigError(
            f"data.image_size is {config.data.image_size} but run {run}'s model takes {remote.image_size} px images; "
            "use the site config that the site trained the run with"
        )
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; --images names the folder of scans to diagnose")
    files, skipped = image_files(folder)
    if not files and not skipped:
        raise DataError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}); put the scans there")
    if not files:
        raise no_usable_image(folder, skipped)
    channels = build_surrogates(config, progress=progress).manifest["image_shape"][0]
    if channels != remote.channels:
        raise ConfigError(
            f"data.channels: site {config.site}'s surrogates have {channels} channel(s) but run {run}'s model "
            f"takes {remote.channels}; use the site config that the site trained the run with"
        )
    result = Predictions(remote, skipped=skipped)
    for image_id, surrogate in convert_folder(config, folder, files, channels, remote.mode, result.skipped, progress):
        answer = _request(
            session,
            server,
            "POST",
            f"/api/runs/{quote(run, safe='')}/diagnose",
            image_id,  # for the error message only; never sent
            data=surrogate_png(surrogate),
            headers={"Content-Type": "image/png"},
        )
        result.predictions.append(Prediction(image_id, answer["class"], answer["probabilities"], int(answer["round"])))
    if not result.predictions:
        raise no_usable_image(folder, result.skipped)
    return result


def write_predictions(path: Path, result: Predictions) -> None:
    """Write ``file,class,<probability of each class>`` rows as CSV, atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "class", *result.run.classes])
    for prediction in result.predictions:
        writer.writerow([prediction.file, prediction.label, *(prediction.probabilities[c] for c in result.run.classes)])
    with atomic_writer(path) as stream:
        stream.write(buffer.getvalue().encode("utf-8"))
