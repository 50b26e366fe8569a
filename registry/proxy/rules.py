"""Pull-through cache rules: which upstream a repository name maps to (pure; no I/O).

A rule maps `ecrRepositoryPrefix` (or `ROOT`, every repository) to `upstreamRegistryUrl`, optionally under
`upstreamRepositoryPrefix`. The cache repository for `<prefix>/<rest>` is named exactly that; upstream it is
`<upstream prefix>/<rest>` (or `<rest>` when the upstream prefix is ROOT). The most specific prefix wins
(`registry.naming`, as for repository creation templates). Which upstreams a rule may name is
`registry.upstream_url`'s `UpstreamPolicy`.
"""

from __future__ import annotations

from collections.abc import Iterable

from registry.naming import ECR_HOSTNAME, ROOT, most_specific
from storage.records import PullThroughRule as Rule

DOCKER_HUB_HOSTS = frozenset({"registry-1.docker.io", "docker.io", "index.docker.io", "registry.hub.docker.com"})
SECRET_ARN_MARKER = ":secret:ecr-pullthroughcache/"

# upstreamRegistry values ECR infers from well-known hosts.
KNOWN_UPSTREAMS = {
    "public.ecr.aws": "ecr-public",
    "registry.k8s.io": "k8s",
    "quay.io": "quay",
    "registry-1.docker.io": "docker-hub",
    "ghcr.io": "github-container-registry",
    "registry.gitlab.com": "gitlab-container-registry",
    "cgr.dev": "chainguard",
}


def base_url(rule: Rule) -> str:
    url = rule.upstream_url
    return url if "://" in url else f"https://{url}"


def host(rule: Rule) -> str:
    return base_url(rule).split("://", 1)[1]


def is_docker_hub(rule: Rule) -> bool:
    return host(rule) in DOCKER_HUB_HOSTS or rule.upstream_registry == "docker-hub"


def upstream_repository(rule: Rule, repository: str) -> str:
    """The upstream repository a cache repository mirrors."""
    rest = repository if rule.prefix == ROOT else repository[len(rule.prefix) + 1 :]
    if rule.upstream_prefix != ROOT:
        rest = f"{rule.upstream_prefix}/{rest}"
    if is_docker_hub(rule) and "/" not in rest:
        rest = f"library/{rest}"  # docker-hub/alpine means the official image library/alpine
    return rest


def match(rules: Iterable[Rule], repository: str) -> Rule | None:
    """The rule for a repository: the longest matching prefix, with ROOT as the fallback."""
    return most_specific(rules, lambda rule: rule.prefix, repository)


def for_namespace(rules: Iterable[Rule], namespace: str) -> Rule | None:
    """The rule whose upstream is the host a containerd mirror names in `?ns=` (docker.io = Docker Hub)."""
    ns = namespace.lower().rstrip("/")
    for rule in rules:
        if host(rule) == ns or (ns in DOCKER_HUB_HOSTS and is_docker_hub(rule)):
            return rule
    return None


def secret_name(credential_arn: str) -> str | None:
    """`arn:aws:secretsmanager:REGION:ACCOUNT:secret:ecr-pullthroughcache/NAME` -> NAME."""
    _, marker, name = credential_arn.partition(SECRET_ARN_MARKER)
    return name or None if marker else None


def secret_arn(region: str, account_id: str, name: str) -> str:
    return f"arn:aws:secretsmanager:{region}:{account_id}{SECRET_ARN_MARKER}{name}"


def ecr_region(upstream_url: str) -> str | None:
    """The region in an ECR registry host name (`<account>.dkr.ecr.<region>.amazonaws.com`), if it is one."""
    host = upstream_url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    m = ECR_HOSTNAME.fullmatch(host)
    return m["region"] if m else None


def signing_region(configured: str, upstream_url: str, ours: str) -> str:
    """The region to sign an ECR-style upstream's requests for: the secret's, else its host name's, else ours."""
    return configured or ecr_region(upstream_url) or ours


def infer_upstream_registry(upstream_url: str) -> str | None:
    host = upstream_url.split("://", 1)[-1].rstrip("/")
    if host.endswith(".azurecr.io"):
        return "azure-container-registry"
    if ".dkr.ecr." in host:
        return "ecr"
    return KNOWN_UPSTREAMS.get(host)
