"""What the console's operations pages share: running an ECR operation as the ECR API runs it, form fields, and
telling a refusal (403, to the error page) from a request the operation turned down (shown on the form).

`call` does what `POST /` with `X-Amz-Target` does for the same operation: the viewer must be allowed
`ecr:<Operation>` on the repository (or on `*` for the pull-through cache rules' operations; asked first, so a
refused viewer learns nothing about its input), the parameters are checked against botocore's model, and the
same service method runs. So a console form can do exactly what the viewer
could do with the AWS CLI, and says what the CLI would say when the operation refuses.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from registry import ecr_model, oci
from registry.errors import NameUnknown, RegistryError
from registry.service.ecr_shapes import Caller
from registry.web.auth import base_url
from registry.web.console.sessions import Viewer
from registry.web.context import ECR_OPERATIONS, IMAGES

MAX_FIELD = 32 * 1024  # characters of one form field (a policy is at most 30,720)


def snake(operation: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()


async def call(
    request: web.Request, viewer: Viewer, operation: str, params: dict[str, Any], repository: str | None = None
) -> dict[str, Any]:
    """Run the ECR operation `operation` (CamelCase) with `params` for the viewer, as the ECR API would."""
    model = ecr_model.operation(operation)
    assert model is not None, f"no ECR operation {operation}"
    policy = await request.config_dict[IMAGES].policy_of(repository) if repository else None
    viewer.check(f"ecr:{operation}", repository, policy)  # first: who may not, learns nothing about the input
    checked = ecr_model.validate(model, params)
    name = snake(operation)
    for provider in request.config_dict[ECR_OPERATIONS]:
        if hasattr(provider, name):
            result: dict[str, Any] = await getattr(provider, name)(
                checked, Caller(viewer.principal.name if viewer.principal else None, base_url(request))
            )
            return result
    raise AssertionError(f"no provider of the ECR operation {operation}")


def refused(e: RegistryError) -> bool:
    """Whether an operation's error is a refusal to show on the form (a 4xx other than a denial)."""
    return 400 <= e.status < 500 and e.status not in (401, 403)


def field(form: Mapping[str, Any], name: str, *, required: bool = True) -> str:
    value = form.get(name)
    if value is None or value == "":
        if required:
            raise web.HTTPBadRequest(reason=f"The form lacks {name}.")
        return ""
    if not isinstance(value, str) or len(value) > MAX_FIELD:
        raise web.HTTPBadRequest(reason=f"The form's {name} is not text of at most {MAX_FIELD} characters.")
    return value


def repository_name(raw: str) -> str:
    try:
        return oci.validate_name(raw)
    except RegistryError:
        raise NameUnknown(f"There is no repository {raw!r}.") from None


def console_url(path: str, name: str, **query: object) -> str:
    """`/console/<path>/<name>` with `name` quoted (slashes kept) and the query."""
    url = f"/console/{path}/{urllib.parse.quote(name, safe='/')}"
    return url + ("?" + urllib.parse.urlencode(query) if query else "")


def parse_time(raw: str) -> float | None:
    """A date (2026-12-01) or a date and time (2026-12-01T08:30, seconds optional) in UTC, as epoch seconds;
    None if it is neither."""
    for shape in ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"):
        try:
            return datetime.strptime(raw.strip(), shape).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    return None


def time_field(t: float) -> str:
    """Epoch seconds as a datetime-local input's value (UTC, to the minute)."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M")
