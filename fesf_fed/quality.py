"""Image-quality figures of the paper's Tables 2 and 3: how far surrogates are from hosts and plaintext.

SSIM and PSNR come from scikit-image. LPIPS (Zhang et al. 2018) needs an ImageNet
AlexNet backbone, which nothing here may download: it is computed only when the
user names a local torchvision AlexNet weights file, and otherwise reported as
unavailable with the reason.
"""

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from fesf_fed.errors import ConfigError

#: The image pairs of Tables 2 and 3: (name, reference, surrogate stage).
QUALITY_PAIRS: tuple[tuple[str, str, str], ...] = (
    ("host vs x_su'", "host", "x_su_prime"),
    ("host vs x_sy", "host", "x_sy"),
    ("x_pl vs x_su'", "x_pl", "x_su_prime"),
    ("x_pl vs x_sy", "x_pl", "x_sy"),
    # Not in the paper's tables: what IQEM alone did (x_su), before the second IHM.
    ("host vs x_su", "host", "x_su"),
    ("x_pl vs x_su", "x_pl", "x_su"),
)


@dataclass(frozen=True)
class PairQuality:
    """Mean and standard deviation over images of each figure, for one image pair."""

    pair: str
    ssim_mean: float
    ssim_std: float
    psnr_mean: float
    psnr_std: float
    lpips_mean: float | None = None
    lpips_std: float | None = None


def _ssim_psnr(reference: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    # float images in [0, 1], (C, H, W): data_range must be given for floats.
    multichannel = {"channel_axis": 0} if reference.shape[0] > 1 else {}
    ref, img = (reference if multichannel else reference[0]), (test if multichannel else test[0])
    ssim = structural_similarity(ref, img, data_range=1.0, **multichannel)
    # Identical images have infinite PSNR; cap at 100 dB so means stay finite.
    psnr = 100.0 if np.array_equal(ref, img) else min(peak_signal_noise_ratio(ref, img, data_range=1.0), 100.0)
    return float(ssim), float(psnr)


def load_lpips(weights: Path | None) -> tuple[torch.nn.Module | None, str]:
    """Build LPIPS (AlexNet) from a local torchvision AlexNet state dict.

    Returns
    -------
    model, reason
        The LPIPS model in eval mode and ``""``, or ``None`` and why LPIPS is unavailable.

    Raises
    ------
    ConfigError
        If the named file is missing or is not an AlexNet state dict.
    """
    if weights is None:
        return None, "no local AlexNet weights named (quality.lpips_weights); nothing is downloaded"
    import lpips  # imported here: it is only needed when LPIPS is asked for

    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"quality.lpips_weights: {weights} not found; name a torchvision AlexNet .pth file") from None
    except Exception as exc:  # noqa: BLE001  torch raises many types for a file that is not a checkpoint
        raise ConfigError(f"quality.lpips_weights: {weights} cannot be read by torch.load ({exc})") from None
    with warnings.catch_warnings():
        # pnet_rand=True keeps lpips from downloading the backbone; its calibrated
        # linear heads ship inside the package. torchvision warns about a legacy argument.
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    backbone = model.net.state_dict()
    # lpips slices torchvision's AlexNet.features but keeps its layer indices: sliceK.<i> is features.<i>.
    wanted = {key: "features." + key.split(".", 1)[1] for key in backbone}
    missing = [source for source in wanted.values() if source not in state]
    if missing:
        raise ConfigError(
            f"quality.lpips_weights: {weights} is not a torchvision AlexNet state dict (missing {missing[0]})"
        )
    model.net.load_state_dict({key: state[source] for key, source in wanted.items()})
    return model.eval(), ""


def _lpips_distances(model: torch.nn.Module, reference: np.ndarray, test: np.ndarray) -> np.ndarray:
    def to_input(images: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(images).float()
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        return batch * 2 - 1  # LPIPS expects [-1, 1]

    with torch.no_grad():
        return np.concatenate(
            [
                model(to_input(reference[start : start + 16]), to_input(test[start : start + 16])).flatten().numpy()
                for start in range(0, len(reference), 16)
            ]
        )


def measure_quality(images: dict[str, np.ndarray], lpips_model: torch.nn.Module | None = None) -> list[PairQuality]:
    """Compute SSIM, PSNR and (optionally) LPIPS for every pair of Tables 2 and 3.

    Parameters
    ----------
    images : dict of str to np.ndarray
        ``"host"``, ``"x_pl"``, ``"x_sy"``, ``"x_su"`` and ``"x_su_prime"``, each float ``(N, C, H, W)``
        in [0, 1] with the same shape; image i of each belongs together.
    lpips_model : torch.nn.Module, optional
        From :func:`load_lpips`; None leaves the LPIPS fields empty.

    Returns
    -------
    list of PairQuality
        In the order of ``QUALITY_PAIRS``.
    """
    shapes = {name: array.shape for name, array in images.items()}
    needed = {name for _, reference, stage in QUALITY_PAIRS for name in (reference, stage)}
    if not needed <= shapes.keys():
        raise ValueError(f"images must hold {sorted(needed)}, got {sorted(shapes)}")
    if len({shapes[name] for name in needed}) != 1 or len(shapes["x_pl"]) != 4 or not len(images["x_pl"]):
        raise ValueError(f"images must be non-empty (N, C, H, W) arrays of one shape, got {shapes}")
    results = []
    for pair, reference, stage in QUALITY_PAIRS:
        figures = np.array([_ssim_psnr(r, t) for r, t in zip(images[reference], images[stage])])
        distances = _lpips_distances(lpips_model, images[reference], images[stage]) if lpips_model else None
        results.append(
            PairQuality(
                pair=pair,
                ssim_mean=float(figures[:, 0].mean()),
                ssim_std=float(figures[:, 0].std()),
                psnr_mean=float(figures[:, 1].mean()),
                psnr_std=float(figures[:, 1].std()),
                lpips_mean=None if distances is None else float(distances.mean()),
                lpips_std=None if distances is None else float(distances.std()),
            )
        )
    return results
