"""/openapi.json types the contract: every `$ref` resolves, POST /recover's options part is
`RecoverOptions`, and a job's result is `RecoverResult` (service.contract)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi.testclient import TestClient


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _resolve(schema: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = schema
    for part in ref[2:].split("/"):
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def test_every_ref_in_the_openapi_schema_resolves(api: TestClient) -> None:
    schema = api.get("/openapi.json").json()
    refs = set(_refs(schema))
    assert len(refs) >= 10
    for ref in refs:
        assert isinstance(_resolve(schema, ref), dict)


def test_the_options_and_the_result_are_typed(api: TestClient) -> None:
    schema = api.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    options = components["RecoverOptions"]
    assert set(options["properties"]) == {"people", "focal_length", "tto", "return", "video"}
    body = schema["paths"]["/recover"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert body["schema"]["properties"]["options"] == {
        "$ref": "#/components/schemas/RecoverOptions"
    }
    result = components["JobView"]["properties"]["result"]
    assert {"$ref": "#/components/schemas/RecoverResult"} in result["anyOf"]
    person = _resolve(schema, "#/components/schemas/PersonOut")
    assert {"bbox", "smpl", "camera", "keypoints_2d", "keypoint_source", "fit", "initial"} <= set(
        person["properties"]
    )
