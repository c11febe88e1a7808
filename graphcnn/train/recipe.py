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
        """A copy with the flags that were given (not None) replacing the section's values; a
        dict for a nested section (augment) replaces only the keys it holds."""
        current = self.model_dump()
        given = {k: {**current[k], **v} if isinstance(v, dict) and isinstance(current.get(k), dict)
                 else v for k, v in flags.items() if v is not None}
        try:
            return Recipe.model_validate({**current, **given})
        except ValidationError as exc:
            err = exc.errors()[0]
            names = [part for part in err["loc"] if isinstance(part, str)]
            name = names[-1] if names else "training"  # augment.hflip: the flag is --hflip
            message = err["msg"].removeprefix("Value error, ")
            # a section's own check (augment, schedule) names its field and what it received;
            # the section's whole dict after it would only repeat the settings
            received = None if "received" in message else repr(err.get("input"))
            what = (f"--{name.replace('_', '-')}" if not isinstance(current.get(name), dict)
                    else f"the {name} settings")  # a section's check: no flag of that name
            raise SpecError(f"bad value for {what}: {message}", received=received) from None


def recipe_of(spec) -> Recipe:
    """The spec's `training:` section as a Recipe (the defaults when it has none); the section
    was checked when the spec was read."""
    section = spec.training
    return Recipe(**section.model_dump()) if section is not None else Recipe()
