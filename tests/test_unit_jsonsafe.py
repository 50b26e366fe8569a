"""Hostile input to the pure parsers: nested JSON and numbers written in other scripts' digits never escape as
anything but the parser's own error (which the web layer turns into a 400)."""

from __future__ import annotations

import json

import pytest

from registry import iam_policy as policy
from registry import jsonsafe, lifecycle, oci
from registry.errors import BlobUploadInvalid, ManifestInvalid, RangeNotSatisfiable


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


@pytest.mark.parametrize("depth", [jsonsafe.MAX_DEPTH + 1, 500, 990, 5000, 200_000])
def test_too_deep_is_a_value_error(depth: int) -> None:
    with pytest.raises(jsonsafe.JSONInputError, match="nested deeper than 100 levels"):
        jsonsafe.loads(nested(depth))
    with pytest.raises(jsonsafe.JSONInputError):
        jsonsafe.loads('{"a": ' + nested(depth).replace("[", '{"k": [').replace("]", "]}") + "}")


def test_depth_limit_counts_objects_and_arrays() -> None:
    assert jsonsafe.loads(nested(jsonsafe.MAX_DEPTH)) == json.loads(nested(jsonsafe.MAX_DEPTH))  # at the limit: as json
    doc = "1"
    for i in range(jsonsafe.MAX_DEPTH):
        doc = f'{{"k{i}": {doc}}}' if i % 2 else f"[{doc}, 2]"
    assert not jsonsafe.depth_exceeds(jsonsafe.loads(doc), jsonsafe.MAX_DEPTH)
    with pytest.raises(jsonsafe.JSONInputError):
        jsonsafe.loads("[" + doc + "]")
    assert jsonsafe.loads('"text"') == "text"
    assert jsonsafe.loads(b'{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}


@pytest.mark.parametrize("text", [b"\xff\xfe\x00", b'{"a": "\xc3"}', "1" * 5000, "{", "", "NaN]"])
def test_everything_json_rejects_is_a_json_input_error(text: str | bytes) -> None:
    with pytest.raises(jsonsafe.JSONInputError):
        jsonsafe.loads(text)


def test_parse_constant_is_passed_on() -> None:
    def refuse(name: str) -> None:
        raise ValueError(name)

    assert jsonsafe.loads("NaN") != jsonsafe.loads("NaN")  # float nan, as json.loads gives
    with pytest.raises(jsonsafe.JSONInputError, match="NaN"):
        jsonsafe.loads("[NaN]", parse_constant=refuse)


# -- the parsers that use it -------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [150, 5000])
def test_deep_manifest_is_manifest_invalid(depth: int) -> None:
    body = ('{"schemaVersion": 2, "mediaType": "' + oci.OCI_MANIFEST + '", "x": ' + nested(depth) + "}").encode()
    with pytest.raises(ManifestInvalid, match="nested deeper"):
        oci.parse_manifest(body, oci.OCI_MANIFEST)


@pytest.mark.parametrize(
    "text",
    [
        nested(5000),
        '{"Version": "2012-10-17", "Id": ' + nested(900) + ', "Statement": []}',
    ],
)
def test_deep_policy_is_a_policy_error(text: str) -> None:
    with pytest.raises(policy.PolicyError, match="nested deeper"):
        policy.parse_policy(text, resource_policy=True)


def test_deep_lifecycle_policy_is_a_lifecycle_policy_error() -> None:
    with pytest.raises(lifecycle.LifecyclePolicyError):
        lifecycle.parse_policy('{"rules": ' + nested(5000) + "}")


# -- digits ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["bytes=\u00b2-", "bytes=-\u0663", "bytes=\uff11-2", "bytes=" + "9" * 5000 + "-"])
def test_range_with_odd_digits_is_unsatisfiable(spec: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        oci.parse_range(spec, 100)


def test_range_numbers_past_any_blob_are_clamped() -> None:
    assert oci.parse_range("bytes=0-" + "9" * 5000, 100) == (0, 100)
    assert oci.parse_range("bytes=-" + "9" * 5000, 100) == (0, 100)
    assert oci.parse_range("bytes=0010-0019", 100) == (10, 10)


@pytest.mark.parametrize("value", ["\u0663-5", "0-\u00b2", "0-" + "9" * 19, "0-" + "9" * 5000])
def test_content_range_with_odd_digits_is_invalid(value: str) -> None:
    with pytest.raises(BlobUploadInvalid):
        oci.parse_content_range(value)
