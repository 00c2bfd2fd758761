"""A site's configuration: the model, and the one place that resolves it from its layers.

Every field has the paper's default (docs/design.md section 2) or a CPU-friendly one
where the paper gives none. :func:`parse_config` merges the layers that may set a field
(built-in defaults, the run config's ``site.`` keys, the site's YAML file, the command
line or node config, what the federation assigns) in one order, with one rule for
relative paths: relative to the file that names them, on a command line to the working
directory (docs/configuration.md, "Where a site's settings come from").
"""

import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from fesf_fed.errors import ConfigError

#: The surrogate stages a build can keep (docs/design.md: x_sy, x_su and x_su').
SurrogateKind = Literal["x_sy", "x_su", "x_su_prime"]
SURROGATE_KINDS: tuple[SurrogateKind, ...] = ("x_sy", "x_su", "x_su_prime")


class _Section(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class PartitionConfig(_Section):
    """Which share of the dataset this site holds when one dataset is split across simulated sites.

    ``count`` 1 (the default) means the site holds all of it.
    """

    count: int = Field(1, ge=1)
    index: int = Field(0, ge=0)
    scheme: Literal["iid", "dirichlet"] = "iid"
    alpha: float = Field(0.5, gt=0)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _index_in_range(self) -> "PartitionConfig":
        if self.index >= self.count:
            raise ValueError(f"data.partition.index must be below data.partition.count ({self.count})")
        return self


#: Default of ``data.duplicate_distance``: hash bits two near-duplicate images may differ in.
DUPLICATE_DISTANCE = 8

#: Data sources that ship with FESF-Fed: they need no ``data.path`` and may use generated hosts.
BUILT_IN_SOURCES = ("phantom", "demo")


class DataConfig(_Section):
    """Where a site's plaintext images come from and how they are prepared."""

    source: Literal["phantom", "demo", "folder", "medmnist", "csv"] = "phantom"
    path: Path | None = None
    image_size: int = Field(64, ge=8, le=4096)
    channels: Literal["auto", 1, 3] = "auto"
    test_fraction: float = Field(0.4, gt=0, lt=1)
    #: Share of the training part held out for validation: the federation keeps the global model
    #: of the round with the best validation macro-F1. 0: no validation (the last round's model).
    #: The ``official`` split validates on the file's own val part instead.
    val_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = Field(0, ge=0)
    max_per_class: int | None = Field(None, ge=1)
    phantom_per_class: int = Field(60, ge=2)
    partition: PartitionConfig = PartitionConfig()
    #: ``random``: a seeded split, stratified by class, that keeps groups whole;
    #: ``official``: a MedMNIST file's own train, val and test parts.
    split: Literal["random", "official"] = "random"
    #: Keep near-duplicate images (perceptual hash, mirrored copies included) on one side of the split.
    group_duplicates: bool = True
    #: Most bits (of 64) in which two near-duplicates' perceptual hashes may differ.
    duplicate_distance: int = Field(DUPLICATE_DISTANCE, ge=0, le=32)
    #: Regular expression on image ids (relative paths): images with the same match
    #: (its first group, if it has one) are one group, e.g. a patient id.
    group_pattern: str | None = None
    #: Share of a *public* dataset set aside as public hosts (``hosts.source: dataset``): a fixed part,
    #: drawn stratified by class with groups kept whole and a seed of its own (the same for every
    #: site and, without max_per_class, every data.seed), taken out before the site's share and split,
    #: so it is never trained or tested on. With ``split: official`` it comes from the file's train
    #: part. 0: no public part. Never for a hospital's own images: they are patients.
    public_hosts: float = Field(0.0, ge=0, le=0.5)

    @model_validator(mode="after")
    def _path_given(self) -> "DataConfig":
        if self.source not in BUILT_IN_SOURCES and self.path is None:
            raise ValueError(f"data.path is required for source {self.source!r}")
        return self

    @model_validator(mode="after")
    def _split_fits_source(self) -> "DataConfig":
        if self.split == "official" and self.source != "medmnist":
            raise ValueError("data.split 'official' needs data.source 'medmnist' (the only source with its own split)")
        if self.group_pattern is not None:
            if self.source not in ("folder", "csv"):
                raise ValueError("data.group_pattern needs data.source 'folder' or 'csv' (ids that are file paths)")
            try:
                re.compile(self.group_pattern)
            except re.error as exc:
                raise ValueError(f"data.group_pattern is not a valid regular expression ({exc})") from None
        return self


class HostConfig(_Section):
    """The host bank: non-patient images whose phase every surrogate carries.

    ``source`` is ``folder`` (public, non-patient images of the site's modality under
    ``path``), ``dataset`` (the part of a public dataset, MedMNIST or Br35H, that
    ``data.public_hosts`` sets aside; never a hospital's own images) or ``phantom`` (generated head phantoms,
    ``phantom_count`` of them, a variant: they are not of the task's domain). Left empty,
    it is ``phantom`` for the built-in sets only (``BUILT_IN_SOURCES``): real data must
    name its bank.
    """

    source: Literal["phantom", "folder", "dataset"] | None = None
    path: Path | None = None
    #: A few shared hosts let an attacker average them away and link surrogates to their
    #: plaintexts; thousands (about one per image) are the audited setting (docs/privacy.md).
    phantom_count: int = Field(8, ge=1)
    secret_file: Path | None = None

    @model_validator(mode="after")
    def _path_given(self) -> "HostConfig":
        if self.source == "folder" and self.path is None:
            raise ValueError("hosts.path is required for hosts.source 'folder'")
        return self


class PipelineConfig(_Section):
    """IHM strengths (Eq. 2-3) of the first and the refining hiding step.

    The defaults are the paper's. At them a surrogate's amplitude names its plaintext 97 % of
    the time; docs/privacy.md ("Recommended setting") gives the audited alternative for 64 px
    and up (alpha = alpha' = 0.05, beta 0.05, beta' 0, 4,096 hosts), which is not the default
    because it left the 32 px demo unable to learn.
    """

    alpha: float = Field(0.5, gt=0, le=0.5)
    beta: float = Field(0.5, ge=0, le=1)
    refine_alpha: float = Field(0.5, gt=0, le=0.5)
    refine_beta: float = Field(0.1, ge=0, le=1)
    #: Defence against linkage (fesf_fed/amplitude.py): standard deviation of the logarithm of keyed
    #: random factors on the injected plaintext amplitude. 0 (the default): the paper's IHM.
    amplitude_noise: float = Field(0.0, ge=0, le=8)
    outputs: tuple[SurrogateKind, ...] = SURROGATE_KINDS
    batch_size: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _outputs_given(self) -> "PipelineConfig":
        if not self.outputs:
            raise ValueError(f"pipeline.outputs must name at least one of {list(SURROGATE_KINDS)}")
        return self


class IqemConfig(_Section):
    """The IQEM generator, its discriminator and their training (docs/design.md, IQEM).

    Training stops when G has not come closer to the hosts (SSIM) by ``min_gain`` in
    ``patience`` checks, one every ``check_every`` steps, or after ``steps`` steps; 0 steps
    switches IQEM off (x_su is x_sy). ``lambda_host / (lambda_content + lambda_host)`` is how
    far from x_sy towards its host the two squared-error terms balance.
    """

    steps: int = Field(1500, ge=0)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(2e-4, gt=0)
    lambda_adv: float = Field(1.0, ge=0)
    lambda_content: float = Field(70.0, ge=0)
    lambda_host: float = Field(30.0, ge=0)
    lambda_amplitude: float = Field(0.0, ge=0)
    check_every: int = Field(50, ge=1)
    patience: int = Field(4, ge=1)
    min_gain: float = Field(0.002, ge=0)
    base_channels: int = Field(16, ge=4)
    res_blocks: int = Field(4, ge=0)
    disc_channels: int = Field(32, ge=4)
    disc_layers: int = Field(3, ge=1, le=6)
    checkpoint_every: int = Field(50, ge=1)
    seed: int = Field(0, ge=0)


class QualityConfig(_Section):
    """The image-quality figures of the paper's Tables 2 and 3."""

    max_images: int = Field(200, ge=0)
    lpips_weights: Path | None = None


class AuditConfig(_Section):
    """The privacy audit's attacker and its budgets (``fesf audit``, docs/privacy.md).

    The attacker holds ``attacker_fraction`` of the site's images (a seeded split that
    keeps near-duplicates on one side) or, with ``public``, a folder laid out like
    ``data.path``; the victim is the rest of the site's images.
    """

    attacker_fraction: float = Field(0.5, gt=0, lt=1)
    public: Path | None = None
    #: Epochs of the learned inversion (x_su' -> x_pl); the audit reports SSIM after each one.
    inversion_epochs: int = Field(8, ge=1)
    #: Iterations of HIO/ER phase retrieval in the known-host attack.
    phase_iterations: int = Field(300, ge=1)
    #: Images inverted one by one from a single-image update, and the size of the batch inverted at once.
    gradient_images: int = Field(4, ge=0)
    gradient_batch: int = Field(8, ge=0)
    gradient_iterations: int = Field(500, ge=1)
    #: Epochs the membership target and shadow models train, long enough to overfit.
    membership_epochs: int = Field(60, ge=1)
    #: DP-SGD for the membership target (0: off): its noise multiplier at clipping norm 1 (fesf_fed/dp_sgd.py).
    membership_dp_sgd: float = Field(0.0, ge=0)
    seed: int = Field(0, ge=0)


class SiteConfig(_Section):
    """Everything one site needs to build its surrogates."""

    site: str = Field("A", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    device: str = "auto"
    data: DataConfig = DataConfig()
    hosts: HostConfig = HostConfig()
    pipeline: PipelineConfig = PipelineConfig()
    iqem: IqemConfig = IqemConfig()
    quality: QualityConfig = QualityConfig()
    audit: AuditConfig = AuditConfig()

    @model_validator(mode="after")
    def _hosts_named_for_real_data(self) -> "SiteConfig":
        # docs/design.md: no patient image becomes a host silently; only the built-in sets default to phantom hosts.
        if self.hosts.source is None:
            if self.data.source not in BUILT_IN_SOURCES:
                raise ValueError(
                    "hosts.source is required for real data: 'folder' with hosts.path (non-patient images "
                    "of the same modality), 'dataset' with data.public_hosts (a public dataset's own part) "
                    "or 'phantom' (generated head phantoms)"
                )
            return self.model_copy(update={"hosts": self.hosts.model_copy(update={"source": "phantom"})})
        if self.hosts.source == "dataset" and not self.data.public_hosts:
            raise ValueError(
                "hosts.source 'dataset' needs data.public_hosts, the share of the dataset set aside as hosts (e.g. 0.1)"
            )
        if self.data.public_hosts and not self.data.group_duplicates:
            # Without groups the draw is per image, and a copy of a host could stay among the site's images.
            raise ValueError("data.public_hosts needs data.group_duplicates true, so no copy of a host is trained on")
        return self


def _section_model(section: str) -> type[BaseModel]:
    """The model class of the section ``section`` of a SiteConfig."""
    model = SiteConfig.model_fields[section].annotation
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(f"SiteConfig.{section} is not a section")
    return model


#: Dotted names of the fields that hold paths: relative ones are relative to the config file's folder.
PATH_FIELDS = frozenset(
    f"{section}.{field}"
    for section in ("data", "hosts", "quality", "audit")
    for field, info in _section_model(section).model_fields.items()
    if Path in typing.get_args(info.annotation)
)


def resolve_path(value: str | Path, base: Path | None, name: str = "path") -> Path:
    """``value`` as an absolute path (``~`` expanded); a relative one is taken from ``base``.

    This is the one path rule of every setting (docs/configuration.md, "Paths"): a relative
    path is relative to the file that names it, and one typed on a command line to the
    working directory. ``base`` None means the value comes with no file or folder to be
    relative to (Flower's run config, which reaches the apps as bare values): it must be
    absolute, and ``name`` says which setting it is in the error.

    Raises
    ------
    ConfigError
        If ``value`` is relative and ``base`` is None.
    """
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    if base is None:
        raise ConfigError(
            f"{name}: {str(value)!r} is relative; give an absolute path (the apps do not run in your folder)"
        )
    return (base / path).resolve()


@dataclass(frozen=True)
class _Layer:
    """The values one source gives a site's config, as dotted field names, and how errors name them."""

    values: dict[str, Any]
    #: How an error names a field of this layer; ``{key}`` is its dotted name.
    label: str


def _dotted(tree: Mapping[str, Any], source: str, prefix: str = "") -> dict[str, Any]:
    """A file's nested mapping as ``{dotted name: leaf value}``; an empty section sets nothing.

    Raises
    ------
    ConfigError
        For a key with a dot: in a file, fields are nested (``data: {image_size: 32}``).
    """
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if "." in str(key):
            raise ConfigError(
                f"{source}: {name}: nest the field instead of a dotted name, e.g. data: {{image_size: 32}}"
            )
        if isinstance(value, Mapping):
            flat.update(_dotted(value, source, f"{name}."))
        else:
            flat[name] = value
    return flat


def resolve_path_fields(values: Mapping[str, Any] | None, base: Path | None, label: str = "{key}") -> dict[str, Any]:
    """``values`` (dotted field names) with the path fields (:data:`PATH_FIELDS`) made absolute by :func:`resolve_path`.

    ``label`` names a field in an error; ``{key}`` is its dotted name.
    """
    resolved = dict(values or {})
    for key in PATH_FIELDS & resolved.keys():
        if isinstance(resolved[key], str | Path):
            resolved[key] = str(resolve_path(resolved[key], base, label.format(key=key)))
    return resolved


def _layer(values: Mapping[str, Any] | None, label: str, base: Path | None) -> _Layer:
    """A layer with its path fields made absolute by the one path rule."""
    return _Layer(resolve_path_fields(values, base, label), label)


def _tree(layers: list[_Layer]) -> tuple[dict[str, Any], dict[str, str]]:
    """The layers merged into one nested mapping, later layers winning, and which layer gave each field."""
    tree: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for layer in layers:
        for dotted, value in layer.values.items():
            *parents, leaf = dotted.split(".")
            section = tree
            for depth, part in enumerate(parents):
                if not isinstance(section.get(part, {}), dict):
                    where = ".".join(parents[: depth + 1])
                    raise ConfigError(f"{layer.label.format(key=dotted)}: {where} is not a section")
                section = section.setdefault(part, {})
            section[leaf] = value
            origin[dotted] = layer.label
    return tree, origin


def _label(dotted: str, origin: dict[str, str], fallback: str) -> str:
    """How an error names field ``dotted``: after the layer that set it (or the section it is in), else ``fallback``.

    An error about a whole section or the whole config (a field it requires is missing) is
    named after the file, when there is one: no layer set what is missing.
    """
    parts = dotted.split(".") if dotted else []
    for length in range(len(parts), 0, -1):
        if (prefix := ".".join(parts[:length])) in origin:
            return origin[prefix].format(key=dotted)
    return fallback.format(key=dotted or "config")


def _describe(error: ErrorDetails, model: type[BaseModel], origin: dict[str, str], fallback: str) -> str:
    field = ".".join(str(part) for part in error["loc"])
    where = _label(field, origin, fallback)
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        section: Any = model
        for part in error["loc"][:-1]:
            section = section.model_fields[str(part)].annotation
        allowed = ", ".join(section.model_fields)
        return f"{where}: unknown field; allowed here: {allowed}"
    if error["type"] == "model_type":
        return f"{where}: expected a mapping of fields, got {error['input']!r}"
    got = f" (got {error['input']!r})" if not isinstance(error.get("input"), dict) else ""
    return f"{where}: {message}{got}"


#: How errors name a field set by each layer of :func:`parse_config`.
RUN_CONFIG_LABEL = "run config site.{key}"
COMMAND_LINE_LABEL = "command line {key}"
ASSIGNED_LABEL = "{key} (set by the run)"


def parse_config(
    raw: Mapping[str, Any] | None,
    *,
    source: str = "config",
    base_dir: Path | None = None,
    run_config: Mapping[str, Any] | None = None,
    command_line: Mapping[str, Any] | None = None,
    assigned: Mapping[str, Any] | None = None,
) -> SiteConfig:
    """A site's configuration from every layer that sets it, in the one order of docs/configuration.md.

    Each layer names fields by their dotted names (``{"data.image_size": 128}``); a later
    layer wins over an earlier one:

    1. the built-in defaults (the fields of :class:`SiteConfig`);
    2. ``run_config``: the run config's ``site.`` keys, without the prefix; paths must be absolute;
    3. ``raw``: the site's YAML file; relative paths are relative to ``base_dir``, its folder;
    4. ``command_line``: flags and ``--set`` of ``fesf``, a deployed site's node config;
       relative paths are relative to the working directory;
    5. ``assigned``: what a federation assigns a site, its name and share of a split dataset.

    Parameters
    ----------
    raw : mapping or None
        The parsed YAML (``None`` for no file or an empty one).
    source : str
        What to call the file in error messages (usually its path).
    base_dir : Path, optional
        The file's folder (default: the working directory).
    run_config, command_line, assigned : mapping, optional
        The other layers, as above.

    Raises
    ------
    ConfigError
        One line naming each bad field after the layer that set it, what it allows and the value given.
    """
    if not isinstance(raw or {}, Mapping):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    file_label = f"{source}: {{key}}"
    layers = [
        _layer(run_config, RUN_CONFIG_LABEL, None),
        _layer(_dotted(raw or {}, source), file_label, (base_dir or Path.cwd()).resolve()),
        _layer(command_line, COMMAND_LINE_LABEL, Path.cwd()),
        _layer(assigned, ASSIGNED_LABEL, None),
    ]
    tree, origin = _tree(layers)
    try:
        return SiteConfig.model_validate(tree)
    except ValidationError as exc:
        fallback = file_label if raw else "{key}"
        problems = "; ".join(_describe(error, SiteConfig, origin, fallback) for error in exc.errors())
        raise ConfigError(problems) from None


def parse_assignments(assignments: list[str] | None, example: str) -> dict[str, Any]:
    """``--set KEY=VALUE`` options as ``{KEY: value}``, each value read as YAML (``0.3``, ``true``, ``[1, 2]``).

    Parameters
    ----------
    assignments : list of str or None
        The options' values, in command-line order (a later one wins).
    example : str
        A valid assignment, shown in the error message.

    Raises
    ------
    ConfigError
        For an assignment without ``=`` or a value that is not valid YAML.
    """
    parsed: dict[str, Any] = {}
    for assignment in assignments or []:
        key, equals, value = assignment.partition("=")
        if not equals or not key.strip():
            raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set {example}")
        try:
            parsed[key.strip()] = yaml.safe_load(value)
        except (yaml.YAMLError, RecursionError):
            raise ConfigError(f"--set {assignment!r}: the value is not valid YAML; quote it") from None
    return parsed


def read_yaml(path: Path, missing: str) -> Any:
    """Parse a YAML file; a missing file or bad syntax is a one-line ConfigError naming it.

    ``missing`` ends the message for a missing file, e.g. ``"config file not found; ..."``.
    """
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: {missing}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; name the YAML file itself") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (not UTF-8); name a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config; fix the file") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise ConfigError(f"{path}: not valid YAML{line}; fix the syntax") from None


#: What a config file's top level is called in an error, by the YAML type it parsed to.
_YAML_KINDS = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}


def _require_sections(raw: Any, path: Path) -> None:
    """Refuse a config file that is empty (or only comments) or whose top level is not a mapping of sections.

    Without this an empty file would run silently as the built-in demo.

    Raises
    ------
    ConfigError
        One line naming the file and saying what to write instead.
    """
    if raw is None:
        raise ConfigError(
            f"{path}: empty config file; write the sections to set (e.g. data: {{source: folder, path: ...}}), "
            "or leave out --config for the built-in demo"
        )
    if not isinstance(raw, Mapping):
        kind = _YAML_KINDS.get(type(raw), f"a {type(raw).__name__}")
        raise ConfigError(
            f"{path}: the top level is {kind}, not a mapping of sections "
            "(expected a mapping such as data: {image_size: 64}; see docs/configuration.md)"
        )


def load_config(
    path: str | Path | None = None,
    *,
    run_config: Mapping[str, Any] | None = None,
    command_line: Mapping[str, Any] | None = None,
    assigned: Mapping[str, Any] | None = None,
) -> SiteConfig:
    """Read a site config file and resolve it with the other layers (:func:`parse_config`).

    ``path`` None: no file, the built-in defaults (the phantom demo) and the other layers.

    Raises
    ------
    ConfigError
        If the file is missing, is not YAML, is empty or not a mapping of sections, or a field is invalid.
    """
    raw, source, base_dir = None, "config", None
    if path is not None:
        path = Path(path)
        raw, source, base_dir = (
            read_yaml(path, "config file not found; pass an existing YAML file"),
            str(path),
            path.parent,
        )
        _require_sections(raw, path)
    return parse_config(
        raw, source=source, base_dir=base_dir, run_config=run_config, command_line=command_line, assigned=assigned
    )
