"""``privacy.md``: an audit's results as a page a site's privacy officer can read."""

from fesf_fed.audit.result import AttackResult, AuditReport

__all__ = ["figure_cells", "render_markdown", "verdict_label"]

#: How the report names each figure and baseline.
_LABELS = {
    "top1": "top-1",
    "top5": "top-5",
    "assignment": "one-to-one assignment",
    "top1_over_chance": "top-1 / chance",
    "chance_top1": "chance top-1",
    "chance_top5": "chance top-5",
    "ssim_public_only": "SSIM, public images only",
    "ssim_scan_held_elsewhere": "SSIM, scan held elsewhere",
    "mean_image_ssim": "mean image SSIM",
    "nearest_public_ssim": "nearest public image SSIM",
    "surrogate_itself_ssim": "x_su' itself SSIM",
    "ssim_x_su_prime": "SSIM from x_su'",
    "ssim_x_sy": "SSIM from x_sy",
    "amplitude_relative_error": "amplitude relative error",
    "ssim_guessed_support": "SSIM, guessed support",
    "ssim_true_outline": "SSIM, true outline",
    "ssim_plaintext": "SSIM, site trains on plaintext",
    "ssim_x_su_prime_chained": "SSIM, x_su' mode + learned inversion",
    "loss_threshold_auc": "AUC, loss threshold",
    "shadow_model_auc": "AUC, shadow model",
    "chance_auc": "chance AUC",
}


def figure_cells(values: dict[str, float]) -> str:
    """Named figures as one table cell: ``label value; label value``."""
    return "; ".join(f"{_LABELS.get(key, key)} {value:.3g}" for key, value in values.items())


def verdict_label(result: AttackResult) -> str:
    """``leaks`` when the attack beat its goal, else ``holds``."""
    return "leaks" if result.leaks else "holds"


def _row(result: AttackResult) -> str:
    mark = f"**{verdict_label(result)}**" if result.leaks else verdict_label(result)
    return (
        f"| {result.title} | {figure_cells(result.figures)} | {figure_cells(result.baselines)} | "
        f"{mark}: {result.verdict} | {result.seconds:.0f} s |"
    )


def render_markdown(report: AuditReport) -> str:
    """The audit as Markdown: scenario, one row per attack with its baselines and verdict, the curves."""
    scenario = report.scenario
    pipeline = report.settings["pipeline"]
    lines = [
        f"# Privacy audit `{report.name}`",
        "",
        f"Made {report.created} by `fesf audit`; this run took {report.seconds / 60:.1f} min (an attack done "
        "before with the same settings is reused, its own time is in the table).",
        "",
        f"- Site data: `{report.settings['data'].get('path') or report.settings['data']['source']}` at "
        f"{scenario['image_shape'][-1]} px; victim images {scenario['victim_images']}, attacker images "
        f"{scenario['attacker_images']} ({scenario['attacker_data']}).",
        f"- Surrogates: alpha {pipeline['alpha']}, beta {pipeline['beta']}, alpha' {pipeline['refine_alpha']}, "
        f"beta' {pipeline['refine_beta']}, amplitude noise {pipeline.get('amplitude_noise', 0.0)}, "
        f"{scenario['host_bank']} hosts.",
        "- The attacker knows the method and its settings and builds surrogates of its own images with its own "
        "key, hosts and generator; it holds the victim's key only in the known-host attack.",
        "",
        "| attack | result | baselines | verdict | time |",
        "|---|---|---|---|---|",
        *(_row(result) for result in report.attacks),
        "",
    ]
    leaking = [result.attack for result in report.attacks if result.leaks]
    lines.append(f"Attacks that beat their goal: {', '.join(leaking)}." if leaking else "No attack beat its goal.")
    for result in report.attacks:
        if result.curve:
            points = ", ".join(f"{point.epoch}: {point.ssim:.3f}" for point in result.curve)
            lines += ["", f"{result.title}, victim SSIM after each epoch: {points}."]
    return "\n".join(lines) + "\n"
