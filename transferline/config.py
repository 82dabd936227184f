"""Typed views of params.yaml, one model per section, so a bad value fails before any work."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from transferline.errors import ParamsError

DEFAULT_PARAMS_FILE = Path("params.yaml")


class Section(BaseModel):
    """Base of every params section: unknown keys are errors, values are immutable.

    `removed_keys` maps a key a section no longer has to what replaced it, so an old params.yaml gets
    that instead of a bare "extra inputs are not permitted".
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    removed_keys: ClassVar[dict[str, str]] = {}


IngestSource = Literal["fashion_mnist", "folder", "elpv"]
ElpvTask = Literal["functional_vs_defective", "defect_level"]


class IngestParams(Section):
    """Where raw images come from: Fashion-MNIST, the ELPV solar cells, or a folder of class sub-folders."""

    source: IngestSource = "fashion_mnist"
    path: Path = Path("data/external/fashion-mnist")
    per_class: int | None = Field(default=400, gt=0)
    task: ElpvTask | None = None  # elpv only; None there means functional_vs_defective
    seed: int = 0

    @model_validator(mode="after")
    def _task_only_for_elpv(self) -> IngestParams:
        if self.task is not None and self.source != "elpv":
            raise ValueError(f"task applies only to source elpv (source is {self.source}); set it to null")
        return self


class PreprocessParams(Section):
    """The one definition of model input preprocessing, shared by every stage and the service."""

    image_size: int = Field(default=96, ge=16, le=1024)
    resize: Literal["crop", "squash"] = "crop"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @model_validator(mode="after")
    def _positive_std(self) -> PreprocessParams:
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must all be > 0")
        return self


class PrepareParams(Section):
    """Validation limits, de-duplication and the train/val/test split."""

    val_fraction: float = Field(default=0.15, gt=0, lt=1)
    test_fraction: float = Field(default=0.15, gt=0, lt=1)
    seed: int = 0
    min_per_class: int = Field(default=10, ge=3)
    max_bad_fraction: float = Field(default=0.05, ge=0, le=1)
    max_file_bytes: int = Field(default=50_000_000, gt=0)
    max_pixels: int = Field(default=89_478_485, gt=0)
    cache: bool = True

    @model_validator(mode="after")
    def _room_for_train(self) -> PrepareParams:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% for training")
        return self


SectionT = TypeVar("SectionT", bound=Section)


def read_params_file(path: str | Path = DEFAULT_PARAMS_FILE) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found (run from the project root)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return data


def parse_section(data: dict[str, Any], name: str, model: type[SectionT]) -> SectionT:
    """Validate one section; the error names every bad key as `section.key`."""
    raw = data.get(name, {})
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"params: section '{name}' must be a mapping, got {type(raw).__name__}")
    removed = [f"{name}.{key} was removed: {model.removed_keys[key]}" for key in raw if key in model.removed_keys]
    if removed:
        raise ParamsError("invalid params: " + "; ".join(removed))
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError("invalid params: " + describe_errors(exc, name)) from None


def describe_errors(exc: ValidationError, prefix: str = "") -> str:
    """Each problem as `prefix.key: what is wrong (got value)`, so the message names every bad key."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in (*([prefix] if prefix else []), *err["loc"]))
        got = f" (got {err['input']!r})" if "input" in err and err["type"] != "missing" else ""
        problems.append(f"{where}: {err['msg']}{got}")
    return "; ".join(problems)


def load_section(name: str, model: type[SectionT], path: str | Path = DEFAULT_PARAMS_FILE) -> SectionT:
    return parse_section(read_params_file(path), name, model)


class EvaluateParams(Section):
    """Which extra numbers the evaluate stage records."""

    top_k: int = Field(default=3, ge=1)
    calibration_bins: int = Field(default=15, ge=2)
    batch_size: int = Field(default=128, ge=1)
    gallery_size: int = Field(default=16, ge=1, le=100)


class ExportParams(Section):
    """ONNX export, parity measurement and the optional INT8 variant."""

    parity_batch_size: int = Field(default=32, ge=2)
    parity_images: int = Field(default=256, ge=2)
    int8: bool = True
    int8_calibration_images: int = Field(default=256, ge=8)
    int8_keep_float_ends: bool = True  # first convolution and classifier stay FP32
    int8_max_accuracy_drop: float = Field(default=0.01, ge=0, le=1)
    latency_seconds: float = Field(default=2.0, gt=0)
    ood_rejection_rate: float = Field(default=0.05, gt=0, lt=1)  # in-distribution val images the OOD flag may reject
    ood_method: Literal["mahalanobis", "energy", "msp"] = "mahalanobis"
    ood_feature_rank: int = Field(default=256, ge=1)  # directions of the feature covariance kept exactly
    # mahalanobis: the backbone depths whose pooled features are scored (0 < d <= 1; 1.0: those the head reads)
    ood_layers: tuple[Annotated[float, Field(gt=0, le=1)], ...] = Field(default=(0.33, 0.67, 1.0), min_length=1)
    ood_fit_images: int = Field(default=4000, ge=10)  # training images the feature Gaussian is fitted on, at most
    ood_dir: Path = Path("data/external/ood")  # images outside the model's classes, to check the OOD flag on
    ood_images: int = Field(default=200, ge=1)  # at most this many of them


class GateParams(Section):
    """Every condition a candidate must meet before it may be deployed, checked in one place.

    Against the serving champion, the candidate is rejected only when McNemar's exact test (one-sided)
    finds it less accurate on the same test images at significance `regression_alpha`: a fixed tolerance
    on the accuracy difference flags or passes retrains by seed noise (transferline/evaluation/paired_test.py).
    """

    removed_keys: ClassVar[dict[str, str]] = {
        "champion_tolerance": (
            "replaced by gate.regression_alpha (default 0.05): the candidate is rejected only when McNemar's "
            "exact test finds it less accurate than the champion at that significance level; delete the key"
        ),
    }

    min_accuracy: float = Field(default=0.80, ge=0, le=1)
    min_macro_f1: float = Field(default=0.80, ge=0, le=1)
    min_class_recall: float = Field(default=0.50, ge=0, le=1)
    champion_metric: str = "accuracy"  # the only metric with an exact paired test; see _paired_metric
    regression_alpha: float = Field(default=0.05, gt=0, lt=1)
    allow_class_change: bool = False  # true: a candidate may add or remove classes relative to the champion
    max_logit_diff: float = Field(default=1e-4, gt=0)
    min_top1_agreement: float = Field(default=1.0, ge=0, le=1)
    max_latency_ms: float = Field(default=50.0, gt=0)
    max_model_mb: float = Field(default=50.0, gt=0)
    min_ood_auroc: float = Field(default=0.8, ge=0, le=1)  # the OOD flag must tell these sets from test images:
    ood_check_sets: tuple[str, ...] = ("noise",)  # far sets the gate checks (noise; or also export.ood_dir's path)
    fail_on_reject: bool = False

    @field_validator("champion_metric")
    @classmethod
    def _paired_metric(cls, value: str) -> str:
        if value != "accuracy":
            raise ValueError(
                "only accuracy can be compared with the champion: McNemar's exact test needs a per-image "
                "right/wrong, which macro-F1 has not (gate.min_macro_f1 still bounds it); set accuracy"
            )
        return value


BackboneName = Literal[
    "mobilenet_v2",
    "mobilenet_v3_large",
    "resnet18",
    "resnet50",
    "efficientnet_b0",
    "efficientnet_lite0",
    "convnext_tiny",
    "vgg16",
    "inception_v3",
]
TrainBackbone = Literal[(*BackboneName.__args__, "auto")]  # one Literal: a bad name gets one clear message
StrategyName = Literal["auto", "feature_extraction", "partial", "full", "discriminative"]


class AugmentParams(Section):
    """Batched, on-device augmentation of the cached pixels; crop_scale_min sets its strength."""

    enabled: bool = True
    crop_scale_min: float = Field(default=0.8, gt=0, le=1)  # random-resized-crop keeps this area or more
    hflip: bool = True


class DistributedParams(Section):
    """Data-parallel training (DDP) over several processes; see transferline/model/distributed.py.

    `nproc` is how many processes `python -m stages.train` (so `dvc repro` and the flow) starts on this
    machine, through torchrun's launcher; under a torchrun started by hand (`torchrun ... -m stages.train`,
    several nodes) torchrun's own --nproc-per-node and --nnodes decide and `nproc` is not read. The result
    does not depend on the process count (the same global batches, BatchNorm over the global batch), so a
    checkpoint resumes under any count; with `batchnorm: per_process` it does, and a checkpoint resumes only
    under the count that wrote it.
    """

    nproc: int = Field(default=1, ge=1)
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on CUDA, gloo on CPU
    # global: BatchNorm over the global batch (the model one process trains; an all-reduce per layer and pass);
    # per_process: over each process's rows (cheaper; another model for every process count, rank 0's statistics)
    batchnorm: Literal["global", "per_process"] = "global"


class TrainParams(Section):
    """Backbone, transfer strategy and training recipe of the `train` stage.

    Checks that need the backbone's block list (frozen_blocks) or the machine (device, amp)
    live in transferline.model.strategies.check_params, run before any work.
    """

    backbone: TrainBackbone = "mobilenet_v2"  # auto: chosen from the data (backbone_choice.py)
    backbone_candidates: tuple[BackboneName, ...] | None = None  # backbone auto: null = those with weights here
    pretrained: bool = True  # false: random init, only ever on request
    weights_path: Path | None = None  # local state dict of the backbone architecture, instead of the hub cache
    strategy: StrategyName = "partial"
    frozen_blocks: int = Field(default=4, ge=0)  # partial, discriminative: freeze the first N blocks
    layer_groups: int = Field(default=4, ge=1)  # discriminative: backbone blocks split into this many groups
    lr_decay: float = Field(default=0.5, gt=0, le=1)  # discriminative: LR factor per group toward the input
    gradual_unfreeze: bool = False  # head first, then one more layer group every epoch
    # the fine-tune's starting head: random (seeded) | probe: the feature_extraction head fitted on cached
    # features first (linear probing, then fine-tuning: the body adapts to a head that already fits)
    head_init: Literal["random", "probe"] = "random"
    lr: float = Field(default=2e-3, gt=0)
    head_lr: float | None = Field(default=None, gt=0)  # null: same as lr
    weight_decay: float = Field(default=0.05, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(default=0.9, ge=0, lt=1)  # sgd only
    scheduler: Literal["cosine", "onecycle"] = "onecycle"
    epochs: int = Field(default=5, ge=1)
    warmup_epochs: float = Field(default=1.0, ge=0)
    batch_size: int = Field(default=64, ge=1)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    augment: AugmentParams = AugmentParams()
    early_stopping_patience: int | None = Field(default=3, ge=1)  # epochs without val improvement; null: off
    probe_l2: tuple[float, ...] = (0.1, 0.03, 0.01)  # feature_extraction: L2 strengths tried on val
    probe_standardize: bool = True  # feature_extraction: unit-variance features before the L2; false: centred only
    probe_label_smoothing: float = Field(default=0.0, ge=0, lt=1)  # feature_extraction head's label smoothing
    # feature_extraction: relative depths of the blocks whose pooled outputs the head reads side by side
    # (1.0: the body's output; (1.0,) alone is the usual linear probe); bench/results/transfer_probe_layers.md
    probe_layers: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    seed: int = 0
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16 (or fp16) on CUDA, off on CPU
    channels_last: bool | Literal["auto"] = "auto"
    # CPU threads of each process; null: the cores shared out over the processes on this machine (reproducible:
    # 2 shared out, at least 1 each: a count that depends on the params, never on the machine)
    num_threads: int | None = Field(default=None, ge=1)
    # true: same model bytes on every machine with this kind of CPU, whatever its thread pools and
    # instruction-set settings (kernels capped at AVX2, MKL pinned, fixed thread count); "portable": also on
    # other CPU kinds (AMD and Intel), with convolutions kept off oneDNN, at a cost in speed
    # (transferline/model/reproducibility.py, portable_kernels.py; bench/results/repro.md)
    reproducible: bool | Literal["portable"] = True
    time_budget_s: float | None = Field(default=None, gt=0)  # auto: the chosen recipe must fit (estimated)
    advisor_rule: Path = Path("transferline/model/advisor_rule.json")  # auto: the rule fitted by the transfer study
    distributed: DistributedParams = DistributedParams()  # DDP: processes and backend (torchrun)

    @field_validator("weights_path")
    @classmethod
    def _weights_need_pretrained(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("pretrained") is False:
            raise ValueError("is set but pretrained is false: choose one")
        return value

    @field_validator("warmup_epochs")
    @classmethod
    def _warmup_within_epochs(cls, value: float, info: ValidationInfo) -> float:
        epochs = info.data.get("epochs")
        if epochs is not None and value >= epochs:
            raise ValueError(f"must be below epochs ({epochs})")
        return value

    @field_validator("probe_l2")
    @classmethod
    def _probe_values(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(v < 0 for v in value):
            raise ValueError("must list one or more L2 strengths >= 0")
        return value

    @field_validator("probe_layers")
    @classmethod
    def _probe_depths(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or value[-1] != 1.0 or list(value) != sorted(set(value)) or any(not 0 < v <= 1 for v in value):
            raise ValueError(
                "must list increasing depths in (0, 1] ending with 1.0 (the body's output), e.g. [0.25, 0.5, 0.75, 1.0]"
            )
        return value


class ServeParams(Section):
    """The prediction service: where it listens, how it batches, and what input it accepts.

    Read by `serving/service.py` when the service is defined; each key can be overridden at serve
    time by an environment variable `TRANSFERLINE_SERVE_<KEY>` (e.g. TRANSFERLINE_SERVE_WORKERS=4).
    """

    host: str = "127.0.0.1"
    port: int = Field(default=3000, ge=1, le=65535)
    workers: int = Field(default=2, ge=1)
    ort_threads: int = Field(default=1, ge=0)  # ONNX Runtime intra-op threads per worker; 0: one per core
    provider: Literal["auto", "cuda", "cpu"] = "auto"  # auto: CUDA when usable, else CPU; cuda: fail without it
    batching: bool = True
    max_batch_images: int = Field(default=32, ge=1)
    max_latency_ms: int = Field(default=1000, ge=10)
    max_request_images: int = Field(default=32, ge=1)
    max_image_bytes: int = Field(default=10_000_000, gt=0)
    max_image_pixels: int = Field(default=40_000_000, gt=0)
    top_k_default: int = Field(default=5, ge=1)
    top_k_max: int = Field(default=20, ge=1)
    access_log: bool = False
    tracing: bool = False  # OpenTelemetry spans per request (for a tracing exporter set in BentoML's configuration)
    prediction_log: bool = True  # one JSON line per answered image, written off the request path
    log_dir: Path = Path(".transferline/predictions")  # where (one file per worker)
    log_max_bytes: int = Field(default=50_000_000, ge=10_000)  # rotate each worker's file at this size...
    log_backups: int = Field(default=3, ge=0)  # ...keeping this many older files
    log_images: bool = False  # also log each image itself (base64): only when you may keep your users' images

    @model_validator(mode="after")
    def _top_k_within_max(self) -> ServeParams:
        if self.top_k_default > self.top_k_max:
            raise ValueError(f"top_k_default ({self.top_k_default}) must not exceed top_k_max ({self.top_k_max})")
        return self


SECTION_MODELS: dict[str, type[Section]] = {
    "ingest": IngestParams,
    "preprocess": PreprocessParams,
    "prepare": PrepareParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "export": ExportParams,
    "gate": GateParams,
    "serve": ServeParams,
}


def parse_all_sections(data: dict[str, Any]) -> dict[str, Section]:
    """Every section the stages and the service read, validated as they validate it: one bad key fails them all."""
    return {name: parse_section(data, name, model) for name, model in SECTION_MODELS.items()}
