"""The base of every task's service parameters (pydantic): the same model validates query strings, form
fields and JSON bodies, so a bad value gets the same 422 whichever way it came."""
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field

MODEL_HELP = "name of a served model (GET /v1/models); default: the first served model of this task"


class Params(BaseModel):
    """Parameters every endpoint takes: which served model answers."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: Optional[str] = Field(None, max_length=200, description=MODEL_HELP)
