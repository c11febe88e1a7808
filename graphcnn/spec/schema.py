"""The JSON Schema of the spec language, from the pydantic models (for editors)."""
from __future__ import annotations

from .model import NetworkSpec


def json_schema() -> dict:
    schema = NetworkSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "graphcnn network spec"
    return schema
