"""JSON Schema documents generated from the models (the files under schemas/json/)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter

from schemas.commands import CommandMessage, CommandResultMessage
from schemas.events import EventMessage
from schemas.status import StatusMessage
from schemas.telemetry import TelemetryMessage

__all__ = ["JSON_SCHEMA_DIR_NAME", "generate_json_schemas"]

JSON_SCHEMA_DIR_NAME = "json"

_DOCUMENTS: dict[str, Any] = {
    "telemetry": TelemetryMessage,
    "events": EventMessage,
    "status": StatusMessage,
    "commands": CommandMessage,
    "command_results": CommandResultMessage,
}


def generate_json_schemas() -> dict[str, str]:
    """File name -> JSON text of each protocol v1 schema, deterministic byte for byte."""
    documents = {}
    for name, model in _DOCUMENTS.items():
        schema = TypeAdapter(model).json_schema(mode="validation")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://tgw.dev/schemas/v1/{name}.schema.json"
        schema.setdefault("title", f"tgw v1 {name}")
        text = json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        documents[f"v1/{name}.schema.json"] = text
    return documents
