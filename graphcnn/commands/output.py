"""What commands print: text lines and JSON on stdout."""
from __future__ import annotations

import json
import sys


def out(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def print_json(data) -> None:
    out(json.dumps(data, indent=2))
