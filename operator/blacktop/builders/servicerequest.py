"""What a provisioned ServiceRequest implies: its connection Secret. Pure."""

from __future__ import annotations

import base64
import json
from typing import Any

from blacktop.api.goldenpath import GoldenPathSpec
from blacktop.builders import naming

JSON = dict[str, Any]


def connection_secret_name(request: JSON) -> str:
    """``spec.connectionSecretName``, else ``<request>-connection``."""
    explicit = (request.get("spec") or {}).get("connectionSecretName")
    return str(explicit or f"{request['metadata']['name']}-connection")


def _encode(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return base64.b64encode(text.encode()).decode()


def build_connection_secret(
    request: JSON, golden_path: str, spec: GoldenPathSpec, outputs: dict[str, tuple[Any, bool]]
) -> JSON:
    """The Secret with the outputs the golden path delivers (all of them if it names none)."""
    wanted = [(o.name, o.key or o.name) for o in spec.outputs] or [(name, name) for name in sorted(outputs)]
    data = {key: _encode(outputs[name][0]) for name, key in wanted if name in outputs}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": naming.request_child_metadata(request, golden_path, connection_secret_name(request)),
        "data": data,
    }
