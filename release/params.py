"""The base of every stage's params (and of the shared training params): strict and frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StageParams(BaseModel):
    """Base for every stage's params: unknown keys are errors, not warnings."""

    model_config = ConfigDict(extra="forbid", frozen=True)
