"""The ECR service model (botocore's own `ecr/2015-09-21/service-2.json`) and request validation against it.

botocore validates only required members and minimums on the client, so the server enforces the rest of the
model: every maximum, pattern, enum and type, with ECR's wording
(`Invalid parameter at 'repositoryName' failed to satisfy constraint: '...'`). Blobs are decoded from base64
here, so handlers get bytes.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from pathlib import Path
from typing import Any

import botocore.session
from botocore.model import OperationModel, ServiceModel, Shape

from registry.errors import InvalidParameter, RegistryError, SerializationError

TARGET_PREFIX = "AmazonEC2ContainerRegistry_V20150921"


ADDITIONS = Path(__file__).parent / "ecr-model-additions.json"


@functools.cache
def model_document() -> dict[str, Any]:
    """botocore's ECR model, with the operations (and their shapes) that a newer botocore has and the installed
    one lacks (`ecr-model-additions.json`: replication backfills): the model Moorage serves."""
    doc: dict[str, Any] = (
        botocore.session.get_session().get_component("data_loader").load_service_model("ecr", "service-2")
    )
    additions = json.loads(ADDITIONS.read_text())
    doc = {**doc, "operations": dict(doc["operations"]), "shapes": dict(doc["shapes"])}
    for name, op in additions["operations"].items():
        doc["operations"].setdefault(name, op)
    for name, shape in additions["shapes"].items():
        doc["shapes"].setdefault(name, shape)
    return doc


@functools.cache
def service_model() -> ServiceModel:
    return ServiceModel(model_document(), service_name="ecr")


def operation(name: str) -> OperationModel | None:
    model = service_model()
    return model.operation_model(name) if name in model.operation_names else None


@functools.cache
def _pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _invalid(path: str, constraint: str) -> RegistryError:  # an InvalidParameter (a class errors.py makes at run time)
    return InvalidParameter(f"Invalid parameter at '{path}' failed to satisfy constraint: '{constraint}'")


def validate(op: OperationModel, params: Any) -> dict[str, Any]:
    """Check `params` against the operation's input shape; returns them with blobs decoded."""
    if op.input_shape is None:
        return {}
    if not isinstance(params, dict):
        raise SerializationError("the request body must be a JSON object")
    return _structure(op.input_shape, params, "")


def _structure(shape: Shape, value: dict[str, Any], path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in shape.required_members:
        if value.get(name) is None:
            raise _invalid(_join(path, name), "Member must not be null")
    members = shape.members
    for name, v in value.items():
        member = members.get(name)
        if member is None or v is None:  # unknown members are ignored, as AWS does
            continue
        out[name] = _value(member, v, _join(path, name))
    return out


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _value(shape: Shape, v: Any, path: str) -> Any:
    t = shape.type_name
    meta = shape.metadata
    if t == "structure":
        if not isinstance(v, dict):
            raise SerializationError(f"'{path}' must be an object")
        return _structure(shape, v, path)
    if t == "list":
        if not isinstance(v, list):
            raise SerializationError(f"'{path}' must be a list")
        _bounds(len(v), meta, path, "Member must have length")
        return [_value(shape.member, item, f"{path}.{i + 1}.member") for i, item in enumerate(v)]
    if t == "map":
        if not isinstance(v, dict):
            raise SerializationError(f"'{path}' must be an object")
        _bounds(len(v), meta, path, "Member must have length")
        return {_value(shape.key, k, f"{path}.key"): _value(shape.value, x, f"{path}.value") for k, x in v.items()}
    if t == "string":
        if not isinstance(v, str):
            raise SerializationError(f"'{path}' must be a string")
        _bounds(len(v), meta, path, "Member must have length")
        if shape.enum and v not in shape.enum:
            raise _invalid(path, f"Member must satisfy enum value set: [{', '.join(shape.enum)}]")
        if "pattern" in meta and not _pattern(meta["pattern"]).fullmatch(v):
            raise _invalid(path, f"must satisfy regular expression '{meta['pattern']}'")
        return v
    if t in ("integer", "long"):
        if not isinstance(v, int) or isinstance(v, bool):
            raise SerializationError(f"'{path}' must be an integer")
        _bounds(v, meta, path, "Member must have value")
        return v
    if t in ("float", "double"):
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise SerializationError(f"'{path}' must be a number")
        return v
    if t == "boolean":
        if not isinstance(v, bool):
            raise SerializationError(f"'{path}' must be a boolean")
        return v
    if t == "blob":
        if not isinstance(v, str):
            raise SerializationError(f"'{path}' must be a base64 string")
        try:
            data = base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError):
            raise SerializationError(f"'{path}' is not valid base64") from None
        _bounds(len(data), meta, path, "Member must have length")
        return data
    if t == "timestamp":
        if not isinstance(v, int | float | str) or isinstance(v, bool):
            raise SerializationError(f"'{path}' must be a timestamp")
        return v
    return v


def _bounds(n: int, meta: dict[str, Any], path: str, what: str) -> None:
    if "min" in meta and n < meta["min"]:
        raise _invalid(path, f"{what} greater than or equal to {meta['min']}")
    if "max" in meta and n > meta["max"]:
        raise _invalid(path, f"{what} less than or equal to {meta['max']}")
