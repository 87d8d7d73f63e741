"""The one typed way Blacktop writes an object's status.

Status is written to the ``/status`` subresource with a JSON merge patch of the whole typed model:
fields that became ``None`` are sent as ``null`` and so removed, lists (conditions) are replaced as a
unit, and anything others keep in status is left alone. The user's ``spec`` is never touched.
"""

from __future__ import annotations

from pydantic import BaseModel

from blacktop.kube.client import JSON, Client
from blacktop.kube.resources import Resource


async def write_status(
    client: Client, resource: Resource, name: str, status: BaseModel, namespace: str | None = None
) -> JSON:
    """Replace our part of ``status`` with ``status`` (a pydantic status model)."""
    payload = status.model_dump(by_alias=True, mode="json")
    return await client.merge_patch(resource, name, {"status": payload}, namespace, subresource="status")
