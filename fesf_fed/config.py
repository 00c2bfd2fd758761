"""A site's configuration: one YAML file, validated when loaded.

Every field has the paper's default (docs/design.md section 2) or a CPU-friendly one
where the paper gives none. Relative paths in a file are read relative to that
file's folder, so a config works from any working directory.
"""

import typing
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


#: Data sources that ship with FESF-Fed: they need no ``data.path`` and may use generated hosts.
BUILT_IN_SOURCES = ("phantom", "demo")


class DataConfig(_Section):
    """Where a site's plaintext images come from and how they are prepared."""

    source: Literal["phantom", "demo", "folder", "medmnist", "csv"] = "phantom"
    path: Path | None = None
    image_size: int = Field(64, ge=8, le=4096)
    channels: Literal["auto", 1, 3] = "auto"
    test_fraction: float = Field(0.4, gt=0, lt=1)
    seed: int = Field(0, ge=0)
    max_per_class: int | None = Field(None, ge=1)
    phantom_per_class: int = Field(60, ge=2)
    partition: PartitionConfig = PartitionConfig()

    @model_validator(mode="after")
    def _path_given(self) -> "DataConfig":
        if self.source not in BUILT_IN_SOURCES and self.path is None:
            raise ValueError(f"data.path is required for source {self.source!r}")
        return self


class HostConfig(_Section):
    """The host bank: non-patient images whose phase every surrogate carries.

    ``source`` is ``folder`` (images under ``path``) or ``phantom`` (generated head
    phantoms, ``phantom_count`` of them). Left empty, it is ``phantom`` for the built-in
    sets only (``BUILT_IN_SOURCES``): real data must name its bank.
    """

    source: Literal["phantom", "folder"] | None = None
    path: Path | None = None
    phantom_count: int = Field(8, ge=1)
    secret_file: Path | None = None

    @model_validator(mode="after")
    def _path_given(self) -> "HostConfig":
        if self.source == "folder" and self.path is None:
            raise ValueError("hosts.path is required for hosts.source 'folder'")
        return self


class PipelineConfig(_Section):
    """IHM strengths (Eq. 2-3) of the first and the refining hiding step."""

    alpha: float = Field(0.5, gt=0, le=0.5)
    beta: float = Field(0.5, ge=0, le=1)
    refine_alpha: float = Field(0.5, gt=0, le=0.5)
    refine_beta: float = Field(0.1, ge=0, le=1)
    outputs: tuple[SurrogateKind, ...] = SURROGATE_KINDS
    batch_size: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _outputs_given(self) -> "PipelineConfig":
        if not self.outputs:
            raise ValueError(f"pipeline.outputs must name at least one of {list(SURROGATE_KINDS)}")
        return self


class IqemConfig(_Section):
    """The IQEM generator, its discriminator and their training (docs/design.md, IQEM)."""

    steps: int = Field(300, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(2e-4, gt=0)
    lambda_adv: float = Field(1.0, ge=0)
    lambda_content: float = Field(10.0, ge=0)
    lambda_amplitude: float = Field(0.0, ge=0)
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


class SiteConfig(_Section):
    """Everything one site needs to build its surrogates."""

    site: str = Field("A", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    device: str = "auto"
    data: DataConfig = DataConfig()
    hosts: HostConfig = HostConfig()
    pipeline: PipelineConfig = PipelineConfig()
    iqem: IqemConfig = IqemConfig()
    quality: QualityConfig = QualityConfig()

    @model_validator(mode="after")
    def _hosts_named_for_real_data(self) -> "SiteConfig":
        # docs/design.md: no patient image becomes a host silently; only the built-in sets default to phantom hosts.
        if self.hosts.source is None:
            if self.data.source not in BUILT_IN_SOURCES:
                raise ValueError(
                    "hosts.source is required for real data: 'folder' with hosts.path (non-patient images "
                    "of the same modality) or 'phantom' (generated head phantoms)"
                )
            return self.model_copy(update={"hosts": self.hosts.model_copy(update={"source": "phantom"})})
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
    for section in ("data", "hosts", "quality")
    for field, info in _section_model(section).model_fields.items()
    if Path in typing.get_args(info.annotation)
)


def resolve_path(value: str | Path, base: Path) -> Path:
    """``value`` as an absolute path, a relative one taken from ``base``; ``~`` expanded."""
    value = Path(value).expanduser()
    return value if value.is_absolute() else (base / value).resolve()


def _resolve_paths(config: SiteConfig, base: Path) -> SiteConfig:
    sections: dict[str, Any] = {}
    for dotted in PATH_FIELDS:
        name, field = dotted.split(".")
        section = sections.get(name, getattr(config, name))
        value = getattr(section, field)
        # Only fields the file set: a dump with exclude_unset stays what the file said.
        if value is not None and field in section.model_fields_set:
            sections[name] = section.model_copy(update={field: resolve_path(value, base)})
    return config.model_copy(update=sections)


def _describe(error: ErrorDetails, model: type[BaseModel]) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "config"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        section: Any = model
        for part in error["loc"][:-1]:
            section = section.model_fields[str(part)].annotation
        allowed = ", ".join(section.model_fields)
        return f"{field}: unknown field; allowed here: {allowed}"
    if error["type"] == "model_type":
        return f"{field}: expected a mapping of fields, got {error['input']!r}"
    got = f" (got {error['input']!r})" if not isinstance(error.get("input"), dict) else ""
    return f"{field}: {message}{got}"


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, replace: bool = True) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"override {dotted}: {part} is not a section")
    if replace or leaf not in tree:
        tree[leaf] = value


def parse_config(
    raw: dict[str, Any] | None,
    *,
    source: str = "config",
    base_dir: Path | None = None,
    overrides: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> SiteConfig:
    """Validate a config mapping and return the site's configuration.

    Parameters
    ----------
    raw : dict or None
        The parsed YAML (``None`` for an empty file: all defaults).
    source : str
        What to call the config in error messages (usually its path).
    base_dir : Path, optional
        Folder that relative paths are resolved against (default: the working directory).
    overrides : dict, optional
        Dotted field names and values that replace the file's, e.g. ``{"data.image_size": 128}``.
    defaults : dict, optional
        Dotted field names and values used where the file sets nothing.

    Raises
    ------
    ConfigError
        Naming the field, the allowed values and the value given.
    """
    if not isinstance(raw or {}, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at the top level")
    tree: dict[str, Any] = dict(raw or {})
    for dotted, value in (overrides or {}).items():
        _set_dotted(tree, dotted, value)
    for dotted, value in (defaults or {}).items():
        _set_dotted(tree, dotted, value, replace=False)
    try:
        config = SiteConfig.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(_describe(error, SiteConfig) for error in exc.errors())
        raise ConfigError(f"{source}: {problems}") from None
    return _resolve_paths(config, (base_dir or Path.cwd()).resolve())


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
        except yaml.YAMLError:
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
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise ConfigError(f"{path}: not valid YAML{line}; fix the syntax") from None


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> SiteConfig:
    """Read and validate a site config file; ``None`` gives the built-in phantom demo.

    Raises
    ------
    ConfigError
        If the file is missing, is not YAML, or a field is invalid.
    """
    if path is None:
        return parse_config({}, source="built-in defaults", overrides=overrides, defaults=defaults)
    path = Path(path)
    raw = read_yaml(path, "config file not found; pass an existing YAML file")
    return parse_config(
        raw,
        source=str(path),
        base_dir=path.parent,
        overrides=overrides,
        defaults=defaults,
    )
