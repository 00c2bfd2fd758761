"""`fesf audit`: each attack beats its baseline where the surrogates leak, and each defence lowers it."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fesf_fed.cli as cli_module
from fesf_fed.audit.inversion import invert, train_inversion
from fesf_fed.audit.known_host import phase_retrieval, recover_amplitude, twin
from fesf_fed.audit.linkage import linkage_figures
from fesf_fed.audit.result import ATTACKS, AuditReport
from fesf_fed.audit.run import run_audit
from fesf_fed.audit.similarity import aligned, ssim_per_image
from fesf_fed.config import PipelineConfig, load_config
from fesf_fed.data.phantom import phantom_dataset, phantom_hosts
from fesf_fed.ihm import hide
from fesf_fed.pixels import tensor_to_uint8, to_unit_float
from tests.conftest import TINY_BUILD

#: A whole audit in about ten seconds: 48 phantom images at 32 px, tiny nets and budgets.
TINY_AUDIT = {
    **TINY_BUILD,
    "data.image_size": 32,
    "data.phantom_per_class": 24,
    "hosts.phantom_count": 1,
    "audit.inversion_epochs": 2,
    "audit.phase_iterations": 50,
    "audit.gradient_images": 1,
    "audit.gradient_batch": 3,  # more images than classes: the labels cannot be read off the update
    "audit.gradient_iterations": 20,
    "audit.membership_epochs": 30,
}
#: Deliberately leaky: the whole plaintext amplitude (the whole window, all of it) in both steps, one host for all.
LEAKY = {"pipeline.alpha": 0.5, "pipeline.beta": 1.0, "pipeline.refine_alpha": 0.5, "pipeline.refine_beta": 1.0}


def _audit(name: str, attacks: list[str], **settings: object) -> AuditReport:
    config = load_config(None, command_line={**TINY_AUDIT, **settings})
    report, _ = run_audit(config, name, attacks, progress=False)
    return report


def _result(report: AuditReport, attack: str):
    (result,) = [result for result in report.attacks if result.attack == attack]
    return result


def test_linkage_and_retrieval_find_the_plaintext_of_leaky_surrogates_and_defences_lower_them() -> None:
    leaky = _audit("leaky", ["linkage", "retrieval"], **LEAKY)
    linkage = _result(leaky, "linkage")
    assert linkage.figures["top1"] > 5 * linkage.baselines["chance_top1"] and linkage.leaks
    retrieval = _result(leaky, "retrieval")
    assert retrieval.figures["ssim_scan_held_elsewhere"] > retrieval.baselines["nearest_public_ssim"] + 0.2

    noisy = _audit("noisy", ["linkage", "retrieval"], **LEAKY, **{"pipeline.amplitude_noise": 4.0})
    assert _result(noisy, "linkage").figures["top1"] < linkage.figures["top1"] - 0.3
    assert (
        _result(noisy, "retrieval").figures["ssim_scan_held_elsewhere"]
        < retrieval.figures["ssim_scan_held_elsewhere"] - 0.1
    )
    # Nothing of the plaintext injected: linkage is down to chance (a few hits of 24 at most).
    blind = _audit("blind", ["linkage"], **{"pipeline.beta": 0.0, "pipeline.refine_beta": 0.0})
    assert _result(blind, "linkage").figures["top1"] <= 4 / 24 and not _result(blind, "linkage").leaks


def test_linkage_figures_count_ranks_and_a_one_to_one_assignment() -> None:
    scores = np.array([[0.9, 0.1, 0.0], [0.8, 0.7, 0.1], [0.2, 0.1, 0.0]])
    figures = linkage_figures(scores, np.array([0, 1, 2]))
    # Row 1's best is column 0 (wrong), row 2's is column 0 (wrong): top-1 1/3; the assignment fixes both.
    assert (
        figures.top1 == pytest.approx(1 / 3)
        and figures.assignment == 1.0
        and figures.chance_top1 == pytest.approx(1 / 3)
    )
    # Identical surrogates name their plaintext by chance, not every time.
    tied = linkage_figures(np.ones((4, 4)), np.arange(4))
    assert tied.top1 == pytest.approx(1 / 4) and tied.top5 == 1.0 and tied.assignment < 1.0


def test_learned_inversion_learns_an_invertible_map() -> None:
    images = phantom_dataset(per_class=20, size=16, seed=0).images
    surrogates = 255 - images  # a map the network can learn: the attack must beat the mean image on it
    model = train_inversion(surrogates[:30], images[:30], epochs=30, device=torch.device("cpu"), batch_size=8, lr=3e-3)
    guesses = invert(model, surrogates[30:], torch.device("cpu"))
    truth = images[30:] / 255.0
    mean = np.repeat(images[:30].mean(axis=0, keepdims=True) / 255.0, len(truth), axis=0)
    assert ssim_per_image(truth, guesses).mean() > ssim_per_image(truth, mean).mean() + 0.1


def test_known_host_recovers_the_amplitude_and_phase_retrieval_uses_it() -> None:
    plain = phantom_dataset(per_class=4, size=32, seed=1).images
    hosts = phantom_hosts(len(plain), 32, seed=5)
    config = PipelineConfig(alpha=0.5, beta=0.5, refine_alpha=0.5, refine_beta=0.1)
    x_sy = hide(to_unit_float(plain, torch.device("cpu")), to_unit_float(hosts, torch.device("cpu")), beta=0.5)
    # G taken as the identity, as the attack assumes: then only rounding and clamping stand in its way.
    x_su_prime = hide(to_unit_float(plain, torch.device("cpu")), x_sy, beta=0.1)
    prior = np.zeros((1, 32, 17))
    amplitude = recover_amplitude(tensor_to_uint8(x_su_prime), hosts, config, prior)
    truth = np.abs(np.fft.rfft2(plain / 255.0))

    def error(guess: np.ndarray) -> float:
        return float(np.linalg.norm(guess - truth) / np.linalg.norm(truth))

    # Clamping x_sy to [0, 1] is what the linear model misses; the host's share is gone all the same.
    surrogate_amplitude = np.abs(np.fft.rfft2(tensor_to_uint8(x_su_prime) / 255.0))
    assert error(amplitude) < 0.2 and error(amplitude) < 0.5 * error(surrogate_amplitude)

    unit = plain / 255.0
    guesses = phase_retrieval(truth, unit > 0.05, iterations=200, width=32)
    recovered = np.maximum(ssim_per_image(unit, guesses), ssim_per_image(unit, twin(guesses)))
    noise = np.random.default_rng(0).random(unit.shape) * (unit > 0.05)
    assert recovered.mean() > ssim_per_image(unit, noise).mean() + 0.2


def test_twin_and_alignment_undo_the_ambiguities_of_a_reconstruction() -> None:
    image = np.random.default_rng(0).random((1, 1, 8, 8))
    # The twin has the same Fourier amplitude: phase retrieval cannot tell them apart.
    assert np.allclose(np.abs(np.fft.rfft2(twin(image))), np.abs(np.fft.rfft2(image)))
    assert np.allclose(twin(twin(image)), image)
    assert np.allclose(aligned(image, np.roll(image, (3, 5), axis=(-2, -1))), image)


def _tiny_audit_flags() -> list[str]:
    return [arg for field, value in {**TINY_AUDIT, **LEAKY}.items() for arg in ("--set", f"{field}={value}")]


@pytest.fixture
def fesf_main(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(cli_module.console, "width", 200)

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        returncode = cli_module.main([*args, "--quiet"])
        captured = capsys.readouterr()
        return returncode, captured.out, captured.err

    return run


def test_fesf_audit_runs_every_attack_writes_its_report_and_resumes(fesf_main, fesf_home: Path) -> None:
    code, out, err = fesf_main("audit", "--name", "tiny", *_tiny_audit_flags())
    assert code == 0, err
    folder = fesf_home / "audits" / "tiny"
    report = AuditReport.model_validate_json((folder / "privacy.json").read_text())
    assert [result.attack for result in report.attacks] == list(ATTACKS)
    assert report.scenario["victim_images"] + report.scenario["attacker_images"] == 48
    page = (folder / "privacy.md").read_text()
    assert "| attack | result | baselines | verdict | time |" in page and "**leaks**" in page
    assert "inversion of x_su_prime: epoch 2/2" in out and "known_host" in out and "leaks" in out
    assert len(_result(report, "inversion").curve) == 2
    # With the key, the true outline and the recovered amplitude rebuild a fully leaked plaintext.
    known_host = _result(report, "known_host")
    assert known_host.figures["ssim_true_outline"] > known_host.baselines["nearest_public_ssim"]

    # A rerun finds every attack done: only the one whose result is gone runs again.
    (membership,) = (folder / "attacks").glob("membership-*.json")
    membership.unlink()
    code, out, _ = fesf_main("audit", "--name", "tiny", *_tiny_audit_flags())
    assert code == 0 and out.count("done before, reused") == len(ATTACKS) - 1
    assert json.loads((folder / "privacy.json").read_text())["attacks"][0] == report.attacks[0].model_dump(mode="json")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--attack", "telepathy"], "--attack 'telepathy': unknown; choose from linkage"),
        (["--name", "../elsewhere"], "--name '../elsewhere': give a plain folder name"),
        (["--set", "audit.inversion_epochs=0"], "audit.inversion_epochs: Input should be greater than or equal to 1"),
        (["--set", "audit.public=/no/such/folder"], "/no/such/folder"),
        (
            ["--set", "audit.gradient_images=0", "--set", "audit.gradient_batch=0"],
            "audit.gradient_images and audit.gradient_batch are both 0",
        ),
        (["--set", "audit.gradient_images=40"], "exceed the victim's 24 images; lower them"),
    ],
)
def test_bad_audit_input_is_one_line_with_status_2(fesf_main, args: list[str], message: str) -> None:
    code, _, err = fesf_main("audit", "--name", "bad", "--attack", "gradient_inversion", *_tiny_audit_flags(), *args)
    assert code == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err


def test_an_audit_reruns_only_the_attacks_whose_settings_changed(fesf_main) -> None:
    flags = ["--attack", "linkage,known_host", *_tiny_audit_flags()]
    assert fesf_main("audit", "--name", "same", *flags)[0] == 0
    code, out, _ = fesf_main("audit", "--name", "same", *flags, "--set", "audit.phase_iterations=7")
    assert code == 0 and "linkage: done before, reused" in out and "known_host: running" in out
    # Other surrogates: everything is built and attacked again, nothing of the first settings is reported.
    code, out, _ = fesf_main("audit", "--name", "same", *flags, "--set", "pipeline.beta=0.3")
    assert code == 0 and "done before" not in out and "building the victim's surrogates" in out


def test_the_inversion_works_at_any_image_size_and_a_public_folder_needs_the_sites_classes(
    fesf_main, tmp_path: Path
) -> None:
    code, _, err = fesf_main(
        "audit", "--name", "odd", "--attack", "inversion", *_tiny_audit_flags(), "--set", "data.image_size=30"
    )
    assert code == 0, err
    public = tmp_path / "public" / "unknown-class"
    public.mkdir(parents=True)
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(public / "a.png")
    code, _, err = fesf_main(
        "audit", "--name", "pub", *_tiny_audit_flags(), "--set", f"audit.public={tmp_path / 'public'}"
    )
    assert code == 2 and "class 'unknown-class' is not one of the site's (normal, lesion)" in err
