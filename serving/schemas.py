"""What the service's endpoints take and answer, as documented in /docs.json and used by BentoML clients.

The input models describe the wire format for the OpenAPI schema and `bentoml.SyncHTTPClient`; the
body itself is read by `serving.http_input` (see there why), so each input model hands the raw
request through instead of letting BentoML parse it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from bentoml import IODescriptor
from bentoml.validators import ContentType
from pydantic import BaseModel, ConfigDict, Field

# Optional in practice, but not `| None`: BentoML 1.4 cannot build a union of file types. A default
# factory rather than `default=None`, which its file serializer cannot render into the JSON schema.
ImageFile = Annotated[Path, ContentType("image/*")]


def _absent() -> None:
    return None


class RawRequest(BaseModel):
    """Carries the unread starlette Request to the API method, as its `request` argument."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    request: Any


class _RawBodyInput(IODescriptor):
    @classmethod
    async def from_http_request(cls, request, serde) -> RawRequest:
        return RawRequest.model_construct(request=request)


# Not read at all: BentoML's JSON parser would answer a junk body with a 400 and log a traceback for each.
class NoInput(IODescriptor):
    """No input: the body of a POST is ignored."""

    @classmethod
    async def from_http_request(cls, request, serde) -> NoInput:
        return cls.model_construct()


class ClassifyInput(_RawBodyInput):
    """One image: multipart file `image`, or JSON {"image_b64": "<base64>"}; optional `top_k`."""

    image: ImageFile = Field(default_factory=_absent, description="the image file (multipart upload)")
    image_b64: str | None = Field(default=None, description="the image file, base64 (JSON body)")
    top_k: int | None = Field(default=None, description="how many labels to return (default and maximum: serve params)")


class ClassifyBatchInput(_RawBodyInput):
    """Several images: multipart files `images` (repeated), or JSON {"images_b64": [...]}; optional `top_k`."""

    images: list[ImageFile] = Field(default_factory=_absent, description="image files (multipart, field repeated)")
    images_b64: list[str] | None = Field(default=None, description="image files, base64 (JSON body)")
    top_k: int | None = Field(default=None, description="how many labels to return per image")


class LabelProbability(BaseModel):
    label: str
    probability: float


class ModelLineage(BaseModel):
    """Carried by every prediction: which model answered, trained on which data."""

    model_tag: str
    data_version: str


OOD_FLAG = "true when the image looks unlike the model's training data (its score above the calibrated threshold)"
OOD_SCORE = (
    "the out-of-distribution score (by default the Mahalanobis distance of the image's features to the nearest "
    "class; /metadata names the method): higher is less like the training data"
)


class Classification(ModelLineage):
    predictions: list[LabelProbability] = Field(description="top-k labels, most probable first")
    out_of_distribution: bool = Field(description=OOD_FLAG)
    ood_score: float = Field(description=OOD_SCORE)


class ImageResult(BaseModel):
    predictions: list[LabelProbability]
    out_of_distribution: bool = Field(description=OOD_FLAG)
    ood_score: float = Field(description=OOD_SCORE)


class BatchClassification(ModelLineage):
    results: list[ImageResult] = Field(description="one entry per image, in request order")


class ErrorBody(BaseModel):
    """Every refusal (4xx, 503): what is wrong in words, and structured detail where there is any."""

    error: str = Field(description="what is wrong with the request, and how to send it right")
    detail: Any = Field(
        description="usage, limits, or one entry per rejected image (index, reason, status); may be null",
        json_schema_extra={"nullable": True},
    )


class ModelMetadata(ModelLineage):
    classes: list[str]
    input: dict
    provider: str
    git_commit: str | None
    metrics: dict
    gate_decision: dict
    registered_at: str | None
    promoted_at: str | None = Field(description="when it last became champion (None inside a bento)")
    serving: dict
    out_of_distribution: dict = Field(description="the OOD detector: score, threshold and its calibration")
