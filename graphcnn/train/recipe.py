"""The spec's `training:` section: how to train a network, validated like the rest of the spec.

Every key has a default, so a spec without `training:` trains too; command-line flags override
the section key by key.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import SpecError, nearest


class Recipe(BaseModel):
    """Loss, optimizer and schedule. `data` is 'mnist1d' or an .npz path (relative to the spec)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    epochs: int = Field(10, ge=1)
    batch: int = Field(100, ge=1)
    data: str | None = None
    seed: int = Field(0, ge=0)

    def override(self, **flags: Any) -> "Recipe":
        """A copy with the flags that were given (not None) replacing the section's values."""
        given = {k: v for k, v in flags.items() if v is not None}
        try:
            return Recipe.model_validate({**self.model_dump(), **given})
        except ValidationError as exc:
            err = exc.errors()[0]
            name = str(err["loc"][0]) if err["loc"] else "training"
            raise SpecError(f"bad value for --{name.replace('_', '-')}: {err['msg']}",
                            received=repr(err.get("input"))) from None


def recipe_of(spec) -> Recipe:
    """The spec's `training:` section as a Recipe; errors point at the offending line."""
    section = spec.training or {}
    try:
        return Recipe.model_validate(section)
    except ValidationError as exc:
        raise recipe_error(exc, spec) from None


def recipe_error(exc: ValidationError, spec) -> SpecError:
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    err = errors[0]
    key = str(err["loc"][0]) if err["loc"] else ""
    loc = spec.location(("training", key) if key else ("training",))
    if err["type"] == "extra_forbidden":
        hint = nearest(key, Recipe.model_fields)
        return SpecError(f"unknown field '{key}' in training" + (f"; {hint}" if hint else ""),
                         loc=loc, expected="one of: " + ", ".join(Recipe.model_fields))
    return SpecError(f"bad value for 'training.{key}': {err['msg']}", loc=loc,
                     received=repr(err.get("input")))
