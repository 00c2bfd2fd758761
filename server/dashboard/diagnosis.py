"""The surrogate diagnosis service (paper section 2.4): a run's model classifies an uploaded surrogate.

A clinician's site turns a scan into a surrogate locally (``fesf predict``) and sends
only the surrogate; the service returns the predicted class and the class
probabilities. A run's model is the global model of its best validation round, else,
where no site validates, of its newest round (``run_store._Store.model_checkpoint_path``).
Uploads are decoded in memory and never written anywhere.
"""

import io
import pickle
import re
import sqlite3
import struct
import threading
import warnings
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fesf_fed.federation.run_summary import ModelInput
from fesf_fed.models import build_model
from fesf_fed.pixels import to_unit_float

from ..liveness import LIVE_STATUSES
from .runs import UnknownRun, UnreadableRun, open_run, read_error

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Larger images are refused before decoding: a small PNG can inflate to gigabytes of pixels.
MAX_PIXELS = 4096 * 4096
#: What a PNG holds right after its signature: the IHDR chunk (length 13), whose first 8 bytes are
#: the width and height.
_IHDR = struct.Struct(">I4sII")
#: ``<_io.BytesIO object at 0x7f...>`` and the like, which some decoder messages quote.
_OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")
#: Errors a damaged or incompatible checkpoint raises while it is loaded into the run's model.
_CHECKPOINT_ERRORS = (OSError, EOFError, RuntimeError, KeyError, ValueError, TypeError, pickle.UnpicklingError)
#: Global models kept in memory, newest used last.
_CACHED_MODELS = 4


class DiagnosisError(Exception):
    """A request the service refuses, with the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class GlobalModel:
    """A run's model (the global model of its ``round``) and what its input must be."""

    model: torch.nn.Module
    classes: list[str]
    channels: int
    size: int
    round: int


def decode_png(data: bytes, channels: int) -> np.ndarray:
    """Decode a PNG upload to uint8 ``(channels, H, W)``.

    Parameters
    ----------
    data : bytes
        The uploaded file.
    channels : int
        1 (grey) or 3 (RGB): colour becomes grey by luminance, grey is replicated.

    Raises
    ------
    DiagnosisError
        415 for anything that is not a PNG, 413 for one with too many pixels, 400 for a corrupt one.
    """
    if not data:
        raise DiagnosisError(400, "no image: send a PNG as the request body (Content-Type: image/png)")
    if not data.startswith(_PNG_SIGNATURE):
        raise DiagnosisError(415, "the upload is not a PNG image; send a surrogate as PNG")
    width, height = png_size(data)
    if width * height > MAX_PIXELS:
        raise DiagnosisError(413, _too_large(width, height))
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb guard, should its idea of the size differ from the header's.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise DiagnosisError(413, _too_large(image.width, image.height))
                image.load()
                pixels = np.array(image.convert("L" if channels == 1 else "RGB"))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise DiagnosisError(413, f"the image inflates to too many pixels; at most {MAX_PIXELS}") from None
    except UnidentifiedImageError:
        raise DiagnosisError(400, "the PNG cannot be decoded (not a valid PNG); re-export it") from None
    except (OSError, SyntaxError, ValueError, struct.error, zlib.error) as exc:
        raise DiagnosisError(400, f"the PNG cannot be decoded ({_reason(exc)}); re-export it") from None
    return pixels[np.newaxis] if pixels.ndim == 2 else np.ascontiguousarray(np.moveaxis(pixels, -1, 0))


def png_size(data: bytes) -> tuple[int, int]:
    """The width and height a PNG's header declares, read before anything is decoded.

    Raises
    ------
    DiagnosisError
        400 when the header is not there.
    """
    header = data[len(_PNG_SIGNATURE) : len(_PNG_SIGNATURE) + _IHDR.size]
    if len(header) < _IHDR.size:
        raise DiagnosisError(400, "the PNG cannot be decoded (it ends inside its header); re-export it")
    length, kind, width, height = _IHDR.unpack(header)
    if kind != b"IHDR" or length != 13:
        raise DiagnosisError(400, "the PNG cannot be decoded (its header is not where a PNG has it); re-export it")
    return width, height


def _unloadable(name: str, exc: BaseException) -> DiagnosisError:
    """The 503 for a run whose model file cannot be loaded, naming the run, not the file."""
    # torch.load's messages run over many lines and name files: the kind of error says enough.
    return DiagnosisError(
        503, f"run {name}'s model cannot be loaded ({type(exc).__name__}); its checkpoint may be damaged"
    )


def _no_model(name: str, info: dict[str, Any]) -> DiagnosisError:
    """The 409 for a run without a global model: not yet (a live run), or its checkpoints are gone."""
    if info.get("status") in LIVE_STATUSES:
        return DiagnosisError(409, f"run {name} has no global model yet; wait for its first round")
    return DiagnosisError(
        409, f"run {name} has no global model: it ended before its first round, or its checkpoints were removed"
    )


def _too_large(width: int, height: int) -> str:
    """Why an image of ``width`` x ``height`` pixels is refused (413)."""
    return f"the image has {width}x{height} pixels; at most {MAX_PIXELS} (4096x4096)"


def _reason(exc: BaseException) -> str:
    """The first line of an error, without object reprs (``<_io.BytesIO object at 0x...>``)."""
    text = _OBJECT_REPR.sub("the upload", str(exc).strip()).splitlines()
    return text[0] if text else type(exc).__name__


class DiagnosisService:
    """Classify surrogates with the model of any run under ``runs`` (its best validation round's global model).

    Parameters
    ----------
    runs : Path
        The folder of run folders (read-only).
    resize : bool
        Resize uploads of another size to the model's input; otherwise they are refused.
    device : torch.device
        Where models run.
    """

    def __init__(self, runs: Path, resize: bool, device: torch.device) -> None:
        self.runs = runs
        self.resize = resize
        self.device = device
        self._models: OrderedDict[tuple[str, str, int], GlobalModel] = OrderedDict()
        self._lock = threading.Lock()

    def global_model(self, name: str) -> GlobalModel:
        """The run's model: its best validation round's, else its newest round's; loaded once per file.

        Raises
        ------
        DiagnosisError
            404 for an unknown run; 409 for a run without a model yet or one trained on plaintext.
        """
        try:
            return self._global_model(name)
        except UnknownRun as exc:
            raise DiagnosisError(404, str(exc)) from None
        except UnreadableRun as exc:
            raise DiagnosisError(503, str(exc)) from None

    def _global_model(self, name: str) -> GlobalModel:
        run = None
        try:
            run = open_run(self.runs, name)
            info = run.info()
            checkpoint = run.model_checkpoint_path()
            if info.get("config", {}).get("mode") == "plaintext":
                # Its model expects plaintext, and plaintext must not be sent to a service.
                raise DiagnosisError(
                    409, f"run {name} was trained on plaintext; diagnose with a run trained on surrogates"
                )
            if checkpoint is None or "input" not in info:
                raise _no_model(name, info)
            key = (name, checkpoint.name, checkpoint.stat().st_mtime_ns)
            with self._lock:
                if key in self._models:
                    self._models.move_to_end(key)
                    return self._models[key]
            try:
                state = run.model_checkpoint()
            except _CHECKPOINT_ERRORS as exc:
                raise _unloadable(name, exc) from None
            if state is None:  # removed since model_checkpoint_path found it
                raise _no_model(name, info)
        except (sqlite3.Error, OSError, ValueError) as exc:  # ValueError: a stored value that is not JSON
            raise UnreadableRun(name, read_error(exc)) from None
        finally:
            if run is not None:
                run.close()
        try:
            model_input = ModelInput.from_json(info["input"])
            classes, channels, size = info["classes"], model_input.channels, model_input.image_size
            model = build_model(info["config"]["model"], len(classes), channels, image_size=size)
            model.load_state_dict(state["arrays"])
            loaded = GlobalModel(model.to(self.device).eval(), classes, channels, size, int(state["round"]))
        except _CHECKPOINT_ERRORS as exc:
            raise _unloadable(name, exc) from None
        with self._lock:
            self._models[key] = loaded
            while len(self._models) > _CACHED_MODELS:
                self._models.popitem(last=False)
        return loaded

    def diagnose(self, name: str, png: bytes) -> dict[str, Any]:
        """Classify one surrogate PNG with run ``name``'s model.

        Returns
        -------
        dict
            ``run``, ``round`` (of the model), ``class`` (the most probable) and
            ``probabilities`` (class name to probability, in the run's class order).

        Raises
        ------
        DiagnosisError
            With the status and a message that says what to change.
        """
        loaded = self.global_model(name)
        pixels = decode_png(png, loaded.channels)
        height, width = pixels.shape[1:]
        if (height, width) != (loaded.size, loaded.size):
            if not self.resize:
                raise DiagnosisError(
                    422,
                    f"the image is {width}x{height} px; run {name}'s model takes {loaded.size}x{loaded.size} "
                    "(send surrogates made at the run's image size, or start the dashboard with --resize)",
                )
            pixels = np.stack(
                [
                    np.asarray(Image.fromarray(plane).resize((loaded.size, loaded.size), Image.Resampling.BICUBIC))
                    for plane in pixels
                ]
            )
        with torch.no_grad():
            logits = loaded.model(to_unit_float(pixels[np.newaxis], self.device))
            probabilities = torch.softmax(logits, dim=1)[0].cpu().tolist()
        return {
            "run": name,
            "round": loaded.round,
            "class": loaded.classes[int(np.argmax(probabilities))],
            "probabilities": dict(zip(loaded.classes, probabilities)),
        }
