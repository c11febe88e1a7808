"""The training recipe: the spec's `training:` section (spec/training.py, validated when the
spec is read) with the command line's flags laid over it key by key."""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ..errors import SpecError
from ..spec.training import TrainingSection


class Recipe(TrainingSection):
    """Loss, optimizer and schedule, as the spec wrote them or the command line overrode them."""

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
    """The spec's `training:` section as a Recipe (the defaults when it has none); the section
    was checked when the spec was read."""
    section = spec.training
    return Recipe(**section.model_dump()) if section is not None else Recipe()
