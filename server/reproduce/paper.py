"""The paper's published figures, to print beside ours (Sun et al., arXiv 2403.16473, Tables 1-3).

Transcribed from ``../shared/PAPER-TABLES.md``. Of the paper's four datasets only Br35H is
among ours, so only its Table 2 and 3 figures print beside ours; the others print as ``–``.
The paper's PSNR stays near 28 dB even where its SSIM is 0.08-0.14, probably another
intensity scale than ours ([0, 1]): compare SSIM first.
"""

#: The paper's IHM strengths (alpha, beta, alpha', beta'): the headline figure uses these only.
PAPER_PIPELINE = {"alpha": 0.5, "beta": 0.5, "refine_alpha": 0.5, "refine_beta": 0.1}

#: x_su' accuracy as a fraction of plaintext accuracy, Table 1's sixteen (model, dataset) cells averaged.
PAPER_MEAN_RATIO = 0.942

#: Tables 2 and 3: (SSIM, PSNR in dB) by (dataset, reference, stage).
_QUALITY: dict[tuple[str, str, str], tuple[float, float | None]] = {
    ("Br35H", "host", "x_su_prime"): (0.8280, 30.3095),
    ("Br35H", "host", "x_sy"): (0.4477, 28.1640),
    ("Br35H", "x_pl", "x_su_prime"): (0.1352, 28.3169),
    ("Br35H", "x_pl", "x_sy"): (0.0815, 28.2764),
}


def paper_quality(dataset: str, reference: str, stage: str) -> tuple[float, float | None] | None:
    """The paper's (SSIM, PSNR) for ``reference`` vs ``stage`` on this dataset, if it reports them."""
    return _QUALITY.get((dataset, reference, stage))
