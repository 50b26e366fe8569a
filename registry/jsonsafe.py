"""JSON from clients: `json.loads` without its failure modes on hostile input. Pure.

`json.loads` raises RecursionError, not ValueError, on a document nested about a thousand deep (so a handler
that catches ValueError answers 500), and a document nested a few hundred deep parses but can overflow the
stack of whatever walks it later (`json.dumps` with an indent, for one). `loads` raises `JSONInputError`, a
ValueError, for those and for everything `json.loads` rejects (bad syntax, bad UTF-8, integers of more than
4300 digits), so every caller catches one exception and answers its protocol's 400.

No document the registry accepts comes near the depth limit: a manifest is 4 deep, a policy 5.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

MAX_DEPTH = 100


class JSONInputError(ValueError):
    """Not JSON, or JSON nested deeper than allowed; str(e) says which."""


def too_deep(max_depth: int = MAX_DEPTH) -> str:
    return f"JSON nested deeper than {max_depth} levels"


def loads(data: str | bytes, *, max_depth: int = MAX_DEPTH, parse_constant: Callable[[str], Any] | None = None) -> Any:
    """Parse JSON text (str, or bytes in UTF-8/16/32); JSONInputError if it is not JSON or is too deep."""
    try:
        doc = json.loads(data, parse_constant=parse_constant)
    except RecursionError:
        raise JSONInputError(too_deep(max_depth)) from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, the int digits limit
        raise JSONInputError(str(e)) from None
    if depth_exceeds(doc, max_depth):
        raise JSONInputError(too_deep(max_depth))
    return doc


def depth_exceeds(doc: Any, max_depth: int) -> bool:
    """Whether objects and arrays nest more than `max_depth` deep (without recursion; containers only)."""
    stack = [(doc, 1)] if isinstance(doc, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        for child in node.values() if isinstance(node, dict) else node:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False
