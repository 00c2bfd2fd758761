"""The paper's published figures, to print beside ours (Sun et al., arXiv 2403.16473, Tables 1-3).

Only figures we could check are here: the two the project's issue quotes. The paper's
Table 1-3 cells could not be read where these results were made; they print as ``–``.
"""

#: The paper's IHM strengths (alpha, beta, alpha', beta'): the headline figure uses these only.
PAPER_PIPELINE = {"alpha": 0.5, "beta": 0.5, "refine_alpha": 0.5, "refine_beta": 0.1}

#: x_su' accuracy as a fraction of plaintext accuracy, averaged over the paper's datasets.
PAPER_MEAN_RATIO = 0.94

#: Tables 2 and 3: (SSIM, PSNR in dB) by (dataset, reference, stage).
_QUALITY: dict[tuple[str, str, str], tuple[float, float | None]] = {
    ("Br35H", "x_pl", "x_su_prime"): (0.1352, None),
}


def paper_quality(dataset: str, reference: str, stage: str) -> tuple[float, float | None] | None:
    """The paper's (SSIM, PSNR) for ``reference`` vs ``stage`` on this dataset, if it reports them."""
    return _QUALITY.get((dataset, reference, stage))
