"""Every operation of botocore's ECR service model, called through boto3 with valid input against a real server.

None may answer an error (an unknown or unsupported operation least of all), and every response must fit the
operation's output shape in the model (`tests.ecr_shapes`). `CALLS` names each operation's input (and what must
exist before it); an operation the model gains and `CALLS` lacks fails `test_every_model_operation_has_a_call`,
so a botocore upgrade cannot add an operation nobody tried. boto3's paginators and waiters over the scanning
operations are driven too. Finally, every ECR error name Moorage can answer is one botocore knows: a modeled ECR
exception, or one of AWS's common errors.
"""

from __future__ import annotations

import inspect
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from botocore import xform_name

from registry import errors
from tests import scan_images
from tests.ecr_shapes import assert_matches_output, service_model
from tests.oci import OCI_MANIFEST, SIG, Client, descriptor, digest_of, make_image, push_artifact, random_blob
from tests.server import MoorageServer, auth_config, ecr_client, free_port, login_password

ACCOUNT, REGION = "000000000000", "us-east-1"
LIFECYCLE = json.dumps(
    {
        "rules": [
            {
                "rulePriority": 1,
                "description": "keep ten",
                "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 10},
                "action": {"type": "expire"},
            }
        ]
    }
)
SIGNING = {
    "rules": [
        {
            "signingProfileArn": f"arn:aws:signer:{REGION}:{ACCOUNT}:/signing-profiles/moorage_test",
            "repositoryFilters": [{"filter": "all-ops/*", "filterType": "WILDCARD_MATCH"}],
        }
    ]
}
# AWS's common errors (every AWS API may answer them; no service model lists them) that Moorage's ECR API uses.
COMMON_ERRORS = {
    "AccessDeniedException",
    "IncompleteSignatureException",
    "InvalidSignatureException",
    "MissingAuthenticationTokenException",
    "SerializationException",
    "ThrottlingException",
    "UnknownOperationException",
    "UnrecognizedClientException",
}

_seq = itertools.count()


@dataclass
class World:
    """What the calls work on: a server with auth on, its admin's ECR and /v2 clients, and an image with a
    referrer in `repo`."""

    srv: MoorageServer
    ecr: Any
    v2: Client
    repo: str
    digest: str
    layer: str
    upstream: str

    def fresh_repo(self, image: bool = False) -> tuple[str, str]:
        """A repository of its own (with an image tagged v1 when asked): (name, the image's digest or "")."""
        name = f"all-ops/own-{next(_seq)}"
        self.ecr.create_repository(repositoryName=name)
        if not image:
            return name, ""
        img = make_image(1, 256)
        self.v2.push_image(name, "v1", img)
        return name, img.digest


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    upstream = f"http://127.0.0.1:{free_port()}"  # nothing listens: ValidatePullThroughCacheRule says why
    config = auth_config() + '[pull_through]\nallowed_upstreams = ["127.0.0.1"]\n'
    srv = MoorageServer(tmp_path_factory.mktemp("all-ops") / "data", config).start()
    try:
        ecr = ecr_client(srv)
        v2 = Client(srv.url, ("AWS", login_password(srv)))
        repo = "all-ops/base"
        ecr.create_repository(repositoryName=repo)
        img = make_image(1, 512)
        v2.push_image(repo, "v1", img)
        push_artifact(v2, repo, descriptor(OCI_MANIFEST, img.manifest), SIG)
        yield World(srv, ecr, v2, repo, img.digest, digest_of(img.blobs[-1]), upstream)
    finally:
        srv.stop()


# -- what each operation is called with ------------------------------------------------------------------

Params = Callable[[World], dict[str, Any]]


def _image(w: World) -> dict[str, Any]:
    return {"repositoryName": w.repo, "imageId": {"imageTag": "v1"}}


def _destination(w: World) -> dict[str, Any]:
    """A replication destination of its own (no backfill to it is running), in the configuration."""
    destination = {"region": "eu-west-1", "registryId": f"{111122220000 + next(_seq)}"}
    rules = [
        {"destinations": [destination], "repositoryFilters": [{"filter": "all-ops", "filterType": "PREFIX_MATCH"}]}
    ]
    w.ecr.put_replication_configuration(replicationConfiguration={"rules": rules})
    return {"destination": destination}


def _backfill(w: World) -> dict[str, Any]:
    return {"replicationBackfillId": w.ecr.start_replication_backfill(**_destination(w))["replicationBackfillId"]}


def _rule(w: World, prefix: str) -> dict[str, Any]:
    w.ecr.create_pull_through_cache_rule(ecrRepositoryPrefix=prefix, upstreamRegistryUrl=w.upstream)
    return {"ecrRepositoryPrefix": prefix}


def _template(w: World, prefix: str) -> dict[str, Any]:
    w.ecr.create_repository_creation_template(prefix=prefix, appliedFor=["CREATE_ON_PUSH"])
    return {"prefix": prefix}


def _uploaded(w: World, data: bytes) -> dict[str, Any]:
    upload = w.ecr.initiate_layer_upload(repositoryName=w.repo)["uploadId"]
    w.ecr.upload_layer_part(
        repositoryName=w.repo, uploadId=upload, partFirstByte=0, partLastByte=len(data) - 1, layerPartBlob=data
    )
    return {"repositoryName": w.repo, "uploadId": upload, "layerDigests": [digest_of(data)]}


def _registry_policy() -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "ReplicateIn",
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                    "Action": ["ecr:ReplicateImage", "ecr:CreateRepository"],
                    "Resource": f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/*",
                }
            ],
        }
    )


def _exclusion(w: World) -> dict[str, Any]:
    arn = f"arn:aws:iam::{ACCOUNT}:role/scanner-{next(_seq)}"
    w.ecr.register_pull_time_update_exclusion(principalArn=arn)
    return {"principalArn": arn}


def _archive(w: World) -> dict[str, Any]:
    name, digest = w.fresh_repo(image=True)
    return {"repositoryName": name, "imageId": {"imageDigest": digest}, "targetStorageClass": "ARCHIVE"}


def _preview(w: World) -> dict[str, Any]:
    name, _ = w.fresh_repo(image=True)
    w.ecr.start_lifecycle_policy_preview(repositoryName=name, lifecyclePolicyText=LIFECYCLE)
    return {"repositoryName": name}


def _with_lifecycle(w: World) -> dict[str, Any]:
    name, _ = w.fresh_repo()
    w.ecr.put_lifecycle_policy(repositoryName=name, lifecyclePolicyText=LIFECYCLE)
    return {"repositoryName": name}


def _with_repository_policy(w: World) -> dict[str, Any]:
    name, _ = w.fresh_repo()
    w.ecr.set_repository_policy(repositoryName=name, policyText=_registry_policy())
    return {"repositoryName": name}


def _arn(w: World) -> str:
    return f"arn:aws:ecr:{REGION}:{ACCOUNT}:repository/{w.repo}"


CALLS: dict[str, Params] = {
    "BatchCheckLayerAvailability": lambda w: {"repositoryName": w.repo, "layerDigests": [w.layer]},
    "BatchDeleteImage": lambda w: {
        "repositoryName": w.fresh_repo(image=True)[0],
        "imageIds": [{"imageTag": "v1"}],
    },
    "BatchGetImage": lambda w: {"repositoryName": w.repo, "imageIds": [{"imageTag": "v1"}]},
    "BatchGetRepositoryScanningConfiguration": lambda w: {"repositoryNames": [w.repo, "all-ops/missing"]},
    "CompleteLayerUpload": lambda w: _uploaded(w, random_blob(100)),
    "CreatePullThroughCacheRule": lambda w: {
        "ecrRepositoryPrefix": f"cache{next(_seq)}",
        "upstreamRegistryUrl": w.upstream,
    },
    "CreateRepository": lambda w: {"repositoryName": f"all-ops/created-{next(_seq)}"},
    "CreateRepositoryCreationTemplate": lambda w: {"prefix": f"tmpl{next(_seq)}", "appliedFor": ["CREATE_ON_PUSH"]},
    "DeleteLifecyclePolicy": _with_lifecycle,
    "DeletePullThroughCacheRule": lambda w: _rule(w, f"cache{next(_seq)}"),
    "DeleteRegistryPolicy": lambda w: (w.ecr.put_registry_policy(policyText=_registry_policy()), {})[1],
    "DeleteRepository": lambda w: {"repositoryName": w.fresh_repo()[0]},
    "DeleteRepositoryCreationTemplate": lambda w: _template(w, f"tmpl{next(_seq)}"),
    "DeleteRepositoryPolicy": _with_repository_policy,
    "DeleteSigningConfiguration": lambda w: (w.ecr.put_signing_configuration(signingConfiguration=SIGNING), {})[1],
    "DeregisterPullTimeUpdateExclusion": _exclusion,
    "DescribeImageReplicationStatus": _image,
    "DescribeImageScanFindings": lambda w: (w.ecr.start_image_scan(**_image(w)), _image(w))[1],
    "DescribeReplicationBackfillResults": _backfill,
    "DescribeImageSigningStatus": _image,
    "DescribeImages": lambda w: {"repositoryName": w.repo},
    "DescribePullThroughCacheRules": lambda w: {},
    "DescribeRegistry": lambda w: {},
    "DescribeRepositories": lambda w: {},
    "DescribeRepositoryCreationTemplates": lambda w: {},
    "GetAccountSetting": lambda w: {"name": "REGISTRY_POLICY_SCOPE"},
    "GetAuthorizationToken": lambda w: {},
    "GetDownloadUrlForLayer": lambda w: {"repositoryName": w.repo, "layerDigest": w.layer},
    "GetLifecyclePolicy": _with_lifecycle,
    "GetLifecyclePolicyPreview": _preview,
    "GetRegistryPolicy": lambda w: (w.ecr.put_registry_policy(policyText=_registry_policy()), {})[1],
    "GetRegistryScanningConfiguration": lambda w: {},
    "GetRepositoryPolicy": _with_repository_policy,
    "GetSigningConfiguration": lambda w: (w.ecr.put_signing_configuration(signingConfiguration=SIGNING), {})[1],
    "InitiateLayerUpload": lambda w: {"repositoryName": w.repo},
    "ListImageReferrers": lambda w: {"repositoryName": w.repo, "subjectId": {"imageDigest": w.digest}},
    "ListImages": lambda w: {"repositoryName": w.repo},
    "ListPullTimeUpdateExclusions": lambda w: {},
    "ListReplicationBackfills": lambda w: (_backfill(w), {})[1],
    "ListTagsForResource": lambda w: {"resourceArn": _arn(w)},
    "PutAccountSetting": lambda w: {"name": "BLOB_MOUNTING", "value": "ENABLED"},
    "PutImage": lambda w: {
        "repositoryName": w.repo,
        "imageManifest": w.ecr.batch_get_image(repositoryName=w.repo, imageIds=[{"imageTag": "v1"}])["images"][0][
            "imageManifest"
        ],
        "imageTag": f"again-{next(_seq)}",
    },
    "PutImageScanningConfiguration": lambda w: {
        "repositoryName": w.repo,
        "imageScanningConfiguration": {"scanOnPush": True},
    },
    "PutImageTagMutability": lambda w: {"repositoryName": w.repo, "imageTagMutability": "MUTABLE"},
    "PutLifecyclePolicy": lambda w: {"repositoryName": w.fresh_repo()[0], "lifecyclePolicyText": LIFECYCLE},
    "PutRegistryPolicy": lambda w: {"policyText": _registry_policy()},
    "PutRegistryScanningConfiguration": lambda w: {
        "scanType": "BASIC",
        "rules": [
            {"scanFrequency": "SCAN_ON_PUSH", "repositoryFilters": [{"filter": "all-ops/*", "filterType": "WILDCARD"}]}
        ],
    },
    "PutReplicationConfiguration": lambda w: {
        "replicationConfiguration": {
            "rules": [
                {
                    "destinations": [{"region": "eu-west-1", "registryId": "111122223333"}],
                    "repositoryFilters": [{"filter": "all-ops", "filterType": "PREFIX_MATCH"}],
                }
            ]
        }
    },
    "PutSigningConfiguration": lambda w: {"signingConfiguration": SIGNING},
    "RegisterPullTimeUpdateExclusion": lambda w: {"principalArn": f"arn:aws:iam::{ACCOUNT}:user/mirror-{next(_seq)}"},
    "SetRepositoryPolicy": lambda w: {"repositoryName": w.fresh_repo()[0], "policyText": _registry_policy()},
    "StartImageScan": _image,
    "StartReplicationBackfill": _destination,
    "StopReplicationBackfill": _backfill,
    "StartLifecyclePolicyPreview": lambda w: {
        "repositoryName": w.fresh_repo(image=True)[0],
        "lifecyclePolicyText": LIFECYCLE,
    },
    "TagResource": lambda w: {"resourceArn": _arn(w), "tags": [{"Key": "team", "Value": "a"}]},
    "UntagResource": lambda w: {"resourceArn": _arn(w), "tagKeys": ["team"]},
    "UpdateImageStorageClass": _archive,
    "UpdatePullThroughCacheRule": lambda w: _rule(w, f"cache{next(_seq)}"),
    "UpdateRepositoryCreationTemplate": lambda w: {
        **_template(w, f"tmpl{next(_seq)}"),
        "description": "updated",
        "appliedFor": ["CREATE_ON_PUSH", "PULL_THROUGH_CACHE"],
    },
    "UploadLayerPart": lambda w: {
        "repositoryName": w.repo,
        "uploadId": w.ecr.initiate_layer_upload(repositoryName=w.repo)["uploadId"],
        "partFirstByte": 0,
        "partLastByte": 9,
        "layerPartBlob": b"0123456789",
    },
    "ValidatePullThroughCacheRule": lambda w: _rule(w, f"cache{next(_seq)}"),
}


def test_every_model_operation_has_a_call() -> None:
    model = set(service_model().operation_names)
    assert sorted(model - set(CALLS)) == [], "operations of the model nobody calls here"
    assert sorted(set(CALLS) - model) == [], "calls of operations the model does not have"


@pytest.mark.parametrize("operation", sorted(CALLS))
def test_operation_answers_its_output_shape(world: World, operation: str) -> None:
    params = CALLS[operation](world)
    response = getattr(world.ecr, xform_name(operation))(**params)  # a ClientError fails the test with its text
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200, response
    assert_matches_output(operation, response)


# -- paginators and waiters --------------------------------------------------------------------------------


def test_scan_paginator_and_waiter(world: World) -> None:
    """A scan started, boto3's ImageScanComplete waiter ends when it completes, and the findings paginator walks
    (an image of one empty filesystem layer: no packages, no findings)."""
    name, image = world.fresh_repo()[0], scan_images.image(scan_images.layer({"etc/hostname": "x\n"}))
    world.v2.push_image(name, "v1", image)
    target = {"repositoryName": name, "imageId": {"imageTag": "v1"}}
    world.ecr.start_image_scan(**target)
    world.ecr.get_waiter("image_scan_complete").wait(**target, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    pages = list(world.ecr.get_paginator("describe_image_scan_findings").paginate(**target))
    assert [p["imageScanFindings"]["findings"] for p in pages] == [[]]
    assert pages[0]["imageScanStatus"]["status"] == "COMPLETE", pages[0]["imageScanStatus"]


def test_every_paginator_walks(world: World) -> None:
    for name, params in [
        ("describe_images", {"repositoryName": world.repo}),
        ("list_images", {"repositoryName": world.repo}),
        ("describe_repositories", {}),
        ("describe_pull_through_cache_rules", {}),
        ("describe_repository_creation_templates", {}),
    ]:
        pages = list(world.ecr.get_paginator(name).paginate(**params, PaginationConfig={"PageSize": 1}))
        assert pages, name


# -- error names ---------------------------------------------------------------------------------------------


def test_every_error_name_is_known_to_botocore() -> None:
    model = service_model()
    exceptions = {name for name in model.shape_names if model.shape_for(name).metadata.get("exception")}
    codes = {
        cls.ecr_code for cls in vars(errors).values() if inspect.isclass(cls) and issubclass(cls, errors.RegistryError)
    }
    assert sorted(codes - exceptions - COMMON_ERRORS) == []
    assert "UnsupportedOperationException" not in codes
