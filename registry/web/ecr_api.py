"""The ECR JSON 1.1 API: `POST` with `X-Amz-Target: AmazonEC2ContainerRegistry_V20150921.<Operation>`.

botocore POSTs to the endpoint URL's path (usually `/`), so routing is on the header. Each request is
authenticated (SigV4), validated against the service model, authorized (`ecr:<Operation>` on the repository),
then handed to the operation of the same name: a method of one of the `ECR_OPERATIONS` objects (the ECR
service's parts in `registry.service.ecr*`, lifecycle, templates, pull-through cache rules).
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from aiohttp import web

from registry import ecr_model, jsonsafe
from registry.errors import EcrError, InvalidParameter, SerializationError, UnknownOperation
from registry.service.ecr_shapes import Caller
from registry.web.auth import api_principal, base_url, condition_keys
from registry.web.context import ACCESS, ECR, ECR_OPERATIONS, IMAGES
from registry.web.middleware import (
    ACTION,
    ECR_TARGET_HEADER,
    REPOSITORY,
    REQUEST_ID,
    ROUTE,
    is_ecr_request,
    read_body,
)

MAX_BODY = 32 * 1024 * 1024  # an UploadLayerPart of 20 MiB, base64-encoded, and then some
JSON_TYPE = "application/x-amz-json-1.1"
# Operations whose resource is the registry, not a repository.
REGISTRY_OPERATIONS = {"GetAuthorizationToken", "DescribeRegistry", "DescribeRepositories"}
# Operations authorized as another action: listing an image's referrers is reading it (as ECR documents, and as
# /v2/<name>/referrers/<digest> is).
ACTION_OF = {"ListImageReferrers": "ecr:BatchGetImage"}
# DescribeRepositories without repositoryNames is authorized by ECR on `arn:aws:ecr:<region>:<account>:repository/*`.
ALL_REPOSITORIES = "*"


class NotImplementedOperation(EcrError):
    """An operation of ECR's model that Moorage does not implement. ECR's own generic client error,
    `ValidationException` (status 400), which every such operation lists among its errors: botocore raises
    `client.exceptions.ValidationException`, SDKs that check an operation's errors know it, and nothing retries it.
    (`UnknownOperationException`, which AWS's JSON services answer for an operation they don't have, is kept for
    names that are not in the model at all; an error code outside the model only ever reaches callers as a
    generic error.)"""

    ecr_code = "ValidationException"
    default_message = "operation not implemented"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


async def handle(request: web.Request) -> web.Response:
    prefix, _, name = request.headers.get(ECR_TARGET_HEADER, "").partition(".")
    request[ROUTE], request[ACTION] = f"ecr:{name[:64]}", f"ecr:{name[:64]}"
    if prefix != ecr_model.TARGET_PREFIX or not name:
        raise UnknownOperation(
            f"Unknown operation: X-Amz-Target {request.headers.get(ECR_TARGET_HEADER)!r} is not "
            f"{ecr_model.TARGET_PREFIX}.<Operation>"
        )
    body = await read_body(request, MAX_BODY, SerializationError)
    principal = await api_principal(request, body)
    op = ecr_model.operation(name)
    if op is None:
        raise UnknownOperation(f"Unknown operation {name}")
    operation = next(
        (
            getattr(provider, _snake(name))
            for provider in request.app[ECR_OPERATIONS]
            if hasattr(provider, _snake(name))
        ),
        None,
    )
    if operation is None:
        raise NotImplementedOperation(f"Moorage does not implement the ECR operation {name}")
    try:
        raw = jsonsafe.loads(body) if body.strip() else {}
    except ValueError as e:  # not JSON, not UTF-8, or nested too deep: a client error, never a ServerException
        raise SerializationError(f"the request body is not valid JSON: {e}") from None
    params = ecr_model.validate(op, raw)

    access = request.app[ACCESS]
    keys = condition_keys(request, principal)
    caller = Caller(principal.name if principal else None, base_url(request), principal.arn if principal else None)
    extra: dict[str, Any] = {}
    repository = _repository_of(request, params)
    request[REPOSITORY] = repository if isinstance(repository, str) else None
    listing = name == "DescribeRepositories" and "repositoryNames" not in params
    if listing:
        # Pages list only what the caller may describe: every repository not denied to a caller allowed on
        # `repository/*` (as ECR requires), the repositories it is allowed one by one otherwise.
        extra["visible"] = lambda repo: access.allowed(
            principal, ["ecr:DescribeRepositories"], repo.name, repo.policy, keys
        )
    action = ACTION_OF.get(name, f"ecr:{name}")
    if not listing and repository is None:
        access.check(principal, [action], None, condition_keys=keys)
    for repo in repository if isinstance(repository, list) else [repository] if repository else []:
        policy = await request.app[IMAGES].policy_of(repo)
        access.check(principal, [action], repo, policy_text=policy, condition_keys=keys)

    result = await operation(params, caller, **extra)
    if listing and not result["repositories"] and "nextToken" not in params:
        # Nothing to show: unless allowed on `repository/*` (an empty registry), ECR's AccessDeniedException.
        access.check(principal, ["ecr:DescribeRepositories"], ALL_REPOSITORIES, condition_keys=keys)
    return web.Response(
        text=json.dumps(result),
        content_type=JSON_TYPE,
        headers={"x-amzn-RequestId": request.get(REQUEST_ID) or str(uuid.uuid4())},
    )


def _repository_of(request: web.Request, params: dict[str, Any]) -> str | list[str] | None:
    if "repositoryName" in params:
        return params["repositoryName"]
    if "resourceArn" in params:
        return request.app[ECR].repository_from_arn(params["resourceArn"])
    if "repositoryNames" in params:
        return list(params["repositoryNames"])
    return None


__all__ = ["InvalidParameter", "handle", "is_ecr_request"]
