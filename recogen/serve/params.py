"""Request parameters per endpoint (pydantic): the same model validates query strings, form fields and JSON
bodies, so a bad value gets the same 422 whichever way it came."""
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

MODEL_HELP = "name of a served model (GET /v1/models); default: the first served model of this task"


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: Optional[str] = Field(None, max_length=200, description=MODEL_HELP)


class ClassifyParams(Params):
    topk: int = Field(5, ge=1, le=1000, description="how many labels to return (capped at the number of classes)")


class DetectParams(Params):
    conf: Optional[float] = Field(None, ge=0, le=1, description="minimum score (default: the model's, 0.25)")
    iou: Optional[float] = Field(None, gt=0, le=1, description="IoU threshold of class-wise NMS (default 0.45)")
    max_det: Optional[int] = Field(None, ge=1, le=1000, description="most boxes per image (default 100)")


class SegmentParams(Params):
    mask: bool = Field(False, description="also return mask_png (class index per pixel) and overlay_png, base64 PNGs")
    alpha: float = Field(0.5, ge=0, le=1, description="opacity of the class colours in overlay_png")


class GenerateParams(Params):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), populate_by_name=True)
    n: int = Field(16, ge=1, le=10_000, description="number of images (at most the server's --max-generate)")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="random seed: the same seed gives the same images")
    class_: Optional[str] = Field(None, alias="class", max_length=200,
                                  description="class name or index (conditional models); default: every class in turn")
    format: Literal["png", "json"] = Field("png", description="png: one PNG grid; json: base64 PNGs of the grid and each image")


# task -> its params model (recognition tasks; generation is its own endpoint)
PARAMS: dict[str, type[Params]] = {"classify": ClassifyParams, "detect": DetectParams, "segment": SegmentParams}
