"""`graphcnn schema`: the JSON Schema of the spec language, for editors and validators."""
from __future__ import annotations

import json

from .output import out
from .registry import command, configure


@command("schema", "print the JSON Schema of the spec language")
def cmd_schema(args) -> int:
    from ..spec.schema import json_schema

    out(json.dumps(json_schema(), indent=2))
    return 0


configure(cmd_schema)(lambda p: None)
