"""Check ECR API responses against botocore's own ECR service model, field by field.

`assert_matches_output` takes what boto3 returns (timestamps already parsed into aware datetimes);
`assert_raw_matches` takes the JSON body as sent on the wire (timestamps must be epoch seconds, numbers).
`assert_error_matches` checks the members of a modeled exception (e.g. InvalidLayerPartException's
lastValidByteReceived). All walk the model's shapes and assert that every member present is modeled, has
the modeled type, and satisfies the modeled constraints (required members, enum, min/max length or value,
pattern).

One deliberate allowance: a *top-level* output list may be empty even if its shape says `min: 1`, because
ECR answers `{"imageIds": []}` for an empty ListImages or an all-failed BatchDeleteImage, where the model
reuses a request shape (`ImageIdentifierList`, min 1) for the response.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime
from typing import Any

from botocore.model import OperationModel, ServiceModel, Shape

from registry import ecr_model


def service_model() -> ServiceModel:
    """The model Moorage serves: botocore's, with the operations a newer botocore adds (registry/ecr_model.py)."""
    return ecr_model.service_model()


def operation_model(name: str) -> OperationModel:
    model = service_model()
    assert name in model.operation_names, f"{name} is not an ECR operation"
    return model.operation_model(name)


@functools.cache
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


class _Checker:
    def __init__(self, raw: bool) -> None:
        self.raw = raw

    def structure(self, shape: Shape, value: Any, path: str) -> None:
        assert isinstance(value, dict), f"{path}: expected an object ({shape.name}), got {value!r}"
        members = shape.members
        for name in shape.required_members:
            assert name in value and value[name] is not None, f"{path}: required member {name!r} is missing"
        for name, v in value.items():
            assert name in members, f"{path}: {name!r} is not a member of {shape.name} (members: {sorted(members)})"
            self.value(members[name], v, f"{path}.{name}" if path else name, top=False)

    def value(self, shape: Shape, v: Any, path: str, *, top: bool) -> None:
        t = shape.type_name
        meta = shape.metadata
        assert v is not None, f"{path}: null (omit members that have no value)"
        if t == "structure":
            self.structure(shape, v, path)
        elif t == "list":
            assert isinstance(v, list), f"{path}: expected a list, got {type(v).__name__} {v!r}"
            if not (top and not v):
                self.bounds(len(v), meta, path, "list length")
            for i, item in enumerate(v):
                self.value(shape.member, item, f"{path}[{i}]", top=False)
        elif t == "map":
            assert isinstance(v, dict), f"{path}: expected a map, got {v!r}"
            self.bounds(len(v), meta, path, "map size")
            for k, x in v.items():
                self.value(shape.key, k, f"{path}.<key {k!r}>", top=False)
                self.value(shape.value, x, f"{path}[{k!r}]", top=False)
        elif t == "string":
            assert isinstance(v, str), f"{path}: expected a string, got {type(v).__name__} {v!r}"
            self.bounds(len(v), meta, path, "string length")
            if shape.enum:
                assert v in shape.enum, f"{path}: {v!r} is not in the enum {shape.enum}"
            if "pattern" in meta:
                assert _regex(meta["pattern"]).fullmatch(v), f"{path}: {v!r} does not match {meta['pattern']!r}"
        elif t in ("integer", "long"):
            assert isinstance(v, int) and not isinstance(v, bool), f"{path}: expected an integer, got {v!r}"
            self.bounds(v, meta, path, "value")
        elif t in ("float", "double"):
            assert isinstance(v, int | float) and not isinstance(v, bool), f"{path}: expected a number, got {v!r}"
        elif t == "boolean":
            assert isinstance(v, bool), f"{path}: expected a boolean, got {type(v).__name__} {v!r}"
        elif t == "timestamp":
            if self.raw:
                # json protocol, no timestampFormat: epoch seconds as a JSON number
                assert isinstance(v, int | float) and not isinstance(v, bool), (
                    f"{path}: a timestamp must be epoch seconds (a number) on the wire, got {v!r}"
                )
                assert 0 <= v < 4102444800, f"{path}: {v!r} is not plausible epoch seconds"
            else:
                assert isinstance(v, datetime), f"{path}: expected a datetime, got {v!r}"
                assert v.tzinfo is not None, f"{path}: datetime without tzinfo"
        elif t == "blob":
            assert isinstance(v, str if self.raw else bytes), f"{path}: bad blob {v!r}"
        else:
            raise AssertionError(f"{path}: unhandled shape type {t}")

    @staticmethod
    def bounds(n: int, meta: dict[str, Any], path: str, what: str) -> None:
        if "min" in meta:
            assert n >= meta["min"], f"{path}: {what} {n} is under the model's min {meta['min']}"
        if "max" in meta:
            assert n <= meta["max"], f"{path}: {what} {n} is over the model's max {meta['max']}"


def _check(operation_name: str, response: dict[str, Any], raw: bool) -> None:
    shape = operation_model(operation_name).output_shape
    body = {k: v for k, v in response.items() if k != "ResponseMetadata"} if not raw else response
    if shape is None:
        assert body == {}, f"{operation_name} has no output shape, got {body!r}"
        return
    assert isinstance(body, dict), f"{operation_name}: the response must be a JSON object, got {body!r}"
    checker = _Checker(raw)
    members = shape.members
    for name in shape.required_members:
        assert name in body, f"{operation_name}: required member {name!r} is missing"
    for name, v in body.items():
        assert name in members, f"{operation_name}: {name!r} is not an output member (members: {sorted(members)})"
        checker.value(members[name], v, name, top=True)


def assert_error_matches(error_code: str, fields: dict[str, Any], *, raw: bool) -> None:
    """Check an error's members against its exception shape, when the model has one.

    `fields` is the raw error body minus `__type` (raw=True), or the modeled fields botocore lifts to the top
    of a ClientError's response (raw=False, `Error` and `ResponseMetadata` removed).
    """
    model = service_model()
    if error_code not in model.shape_names:
        return  # a generic AWS error (UnknownOperationException, SerializationException, ...): no shape
    shape = model.shape_for(error_code)
    assert shape.metadata.get("exception"), f"{error_code} is not an exception shape"
    checker = _Checker(raw)
    for name, v in fields.items():
        assert name in shape.members, f"{error_code}: {name!r} is not a member (members: {sorted(shape.members)})"
        checker.value(shape.members[name], v, f"{error_code}.{name}", top=False)


def assert_matches_output(operation_name: str, response: dict[str, Any]) -> dict[str, Any]:
    """Assert a boto3-parsed response fits the operation's output shape; returns the response."""
    _check(operation_name, response, raw=False)
    return response


def assert_raw_matches(operation_name: str, raw_json: dict[str, Any]) -> dict[str, Any]:
    """Assert a raw wire JSON body fits the operation's output shape; returns the body."""
    _check(operation_name, raw_json, raw=True)
    return raw_json
