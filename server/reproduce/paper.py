"""The paper's published figures, to print beside ours (Sun et al., arXiv 2403.16473, Tables 1-3).

Only figures we could read from the paper are here; a table cell we could not read is
absent and prints as ``–``.
"""

#: x_su' accuracy as a fraction of plaintext accuracy, averaged over the paper's datasets.
PAPER_MEAN_RATIO = 0.94

#: Table 1: accuracy by (dataset, model, mode).
_ACCURACY: dict[tuple[str, str, str], float] = {}

#: Tables 2 and 3: (SSIM, PSNR in dB) by (dataset, reference, stage).
_QUALITY: dict[tuple[str, str, str], tuple[float, float | None]] = {
    ("Br35H", "x_pl", "x_su_prime"): (0.1352, None),
}


def paper_accuracy(dataset: str, model: str, mode: str) -> float | None:
    """The paper's Table 1 accuracy for this dataset, model and training mode, if it reports one."""
    return _ACCURACY.get((dataset, model, mode))


def paper_quality(dataset: str, reference: str, stage: str) -> tuple[float, float | None] | None:
    """The paper's (SSIM, PSNR) for ``reference`` vs ``stage`` on this dataset, if it reports them."""
    return _QUALITY.get((dataset, reference, stage))
