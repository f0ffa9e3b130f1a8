"""A Kubernetes CRD's openAPIV3Schema as a JSON Schema that refuses what the API server refuses.

Why a converter: a CRD schema is a *structural* OpenAPI v3 schema, read with Kubernetes' rules,
not JSON Schema's. Where JSON Schema allows any property an object schema does not list, the API
server prunes it, and with strict field validation (kubectl's default since 1.27) refuses the
object: an object schema means "these properties and no others", unless it carries
``x-kubernetes-preserve-unknown-fields: true``. So every object schema without that flag and
without an ``additionalProperties`` of its own (a map) gets ``additionalProperties: false``.
Also:

- ``nullable: true`` accepts null as well;
- ``x-kubernetes-embedded-resource: true`` admits apiVersion, kind and metadata;
- the root's ``metadata`` is ``{type: object}`` in every CRD (the API server checks it as
  ObjectMeta): it is replaced by the ObjectMeta schema the caller gives, and apiVersion and
  kind must be the CRD's;
- ``{"x-bnserve-not-vendored": true}`` (tests/deploy/vendor_kserve_schemas.py) rejects any
  value, with a message that says how to vendor the field.

Not checked (the API server does): CEL rules (``x-kubernetes-validations``), key uniqueness of
``x-kubernetes-list-type: map``/``set`` lists, and ``format``s.
"""

from __future__ import annotations

from typing import Any

import jsonschema
import referencing

NOT_VENDORED = "x-bnserve-not-vendored"
_JUNCTORS = ("anyOf", "allOf", "oneOf")


def crd_json_schema(vendored: dict[str, Any], object_meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema for a custom resource of the vendored CRD version."""
    schema = to_json_schema(vendored["openAPIV3Schema"])
    properties = schema["properties"]
    properties["apiVersion"] = {"const": f"{vendored['group']}/{vendored['version']}"}
    properties["kind"] = {"const": vendored["kind"]}
    properties["metadata"] = object_meta
    schema["required"] = sorted({*schema.get("required", ()), "apiVersion", "kind", "metadata"})
    return schema


def to_json_schema(node: dict[str, Any], *, in_junctor: bool = False) -> dict[str, Any]:
    """One structural schema node as JSON Schema (see the module docstring)."""
    if node.get(NOT_VENDORED):
        return {NOT_VENDORED: True, "not": {}}
    out = dict(node)
    if "properties" in node:
        out["properties"] = {name: to_json_schema(sub) for name, sub in node["properties"].items()}
    if isinstance(node.get("items"), dict):
        out["items"] = to_json_schema(node["items"])
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(node["additionalProperties"])
    for junctor in _JUNCTORS:
        if junctor in node:
            out[junctor] = [to_json_schema(sub, in_junctor=True) for sub in node[junctor]]
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    if node.get("x-kubernetes-embedded-resource"):
        out["properties"] = {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                             "metadata": {"type": "object"}, **out.get("properties", {})}
    # A junctor's members only restrict values (structural schemas forbid `type` and
    # properties there), so only the node itself decides which fields exist.
    is_object = node.get("type") == "object" or "properties" in node
    if (is_object and not in_junctor and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def validator(schema: dict[str, Any], *resources: dict[str, Any]) -> jsonschema.Validator:
    """A draft 2020-12 validator; ``resources`` (each with an ``$id``) serve its ``$ref``s."""
    registry: referencing.Registry = referencing.Registry().with_resources(
        (resource["$id"], referencing.Resource.from_contents(resource)) for resource in resources
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def problems(validator: jsonschema.Validator, instance: Any) -> list[str]:
    """Every validation error as "path: message", the not-vendored ones explained."""
    found = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.path))):
        path = ".".join(str(part) for part in error.absolute_path) or "(root)"
        if isinstance(error.schema, dict) and error.schema.get(NOT_VENDORED):
            message = ("the CRD has this field, but its schema was not vendored: add the path "
                       "to KEEP in tests/deploy/vendor_kserve_schemas.py and run it")
        else:
            message = error.message
        found.append(f"{path}: {message}")
    return found
