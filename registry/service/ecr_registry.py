"""ECR's registry-level operations: the registry policy (Put/Get/DeleteRegistryPolicy), account settings
(Get/PutAccountSetting) and pull-time update exclusions (Register/Deregister/ListPullTimeUpdateExclusion(s)).

What they mean is decided elsewhere: the policy's grammar and scope in `registry.registry_policy` (evaluated by
`registry.auth.access`), blob mounting in the upload service, exclusions where pulls are recorded (the image
service). This module checks the requests, stores through `RegistrySettings` and answers ECR's shapes.
"""

from __future__ import annotations

from typing import Any

from registry.errors import (
    ExclusionAlreadyExists,
    ExclusionNotFound,
    InvalidParameter,
    RegistryPolicyNotFound,
)
from registry.registry_policy import SettingError, check_setting, parse_registry_policy
from registry.service.ecr_shapes import DEFAULT_PAGE, Caller, checked_policy, decode_token, encode_token
from registry.service.registry_settings import ACCOUNT, POLICY, RegistrySettings

EXCLUSION_PAGE = 100  # ListPullTimeUpdateExclusions: ECR's default page, and the most its output list holds


class RegistryOperations:
    def __init__(self, settings: RegistrySettings, *, account_id: str) -> None:
        self.settings = settings
        self.account_id = account_id

    # -- the registry policy -------------------------------------------------------------------------
    async def put_registry_policy(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        _, scope = self.settings.registry_policy()
        text = checked_policy(params["policyText"], "registry", lambda doc: parse_registry_policy(doc, scope))
        await self.settings.put(POLICY, text)
        return {"registryId": self.account_id, "policyText": text}

    async def get_registry_policy(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        text, _ = self.settings.registry_policy()
        if text is None:
            raise RegistryPolicyNotFound(f"Registry policy does not exist in the registry with id '{self.account_id}'")
        return {"registryId": self.account_id, "policyText": text}

    async def delete_registry_policy(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        out = await self.get_registry_policy(params, caller)
        await self.settings.delete(POLICY)
        return out

    # -- account settings ------------------------------------------------------------------------------
    async def get_account_setting(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = params["name"]
        try:
            check_setting(name)
        except SettingError as e:
            raise InvalidParameter(str(e)) from None
        return {"name": name, "value": self.settings.account_setting(name)}

    async def put_account_setting(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name, value = params["name"], params["value"]
        try:
            check_setting(name, value)
        except SettingError as e:
            raise InvalidParameter(str(e)) from None
        await self.settings.put(ACCOUNT + name, value)
        return {"name": name, "value": value}

    # -- pull-time update exclusions ---------------------------------------------------------------------
    async def register_pull_time_update_exclusion(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        arn = params["principalArn"]
        created_at = await self.settings.exclude(arn)
        if created_at is None:
            raise ExclusionAlreadyExists(
                f"The principal '{arn}' is already excluded from pull time updates in the registry with id "
                f"'{self.account_id}'"
            )
        return {"principalArn": arn, "createdAt": created_at}

    async def deregister_pull_time_update_exclusion(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        arn = params["principalArn"]
        if not await self.settings.include(arn):
            raise ExclusionNotFound(
                f"The principal '{arn}' is not excluded from pull time updates in the registry with id "
                f"'{self.account_id}'"
            )
        return {"principalArn": arn}

    async def list_pull_time_update_exclusions(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        limit = min(params.get("maxResults", DEFAULT_PAGE), EXCLUSION_PAGE)
        after = decode_token(params.get("nextToken"), str)
        arns = [arn for arn, _ in self.settings.exclusions() if after is None or arn > after]
        out: dict[str, Any] = {"pullTimeUpdateExclusions": arns[:limit]}
        if len(arns) > limit:
            out["nextToken"] = encode_token(arns[limit - 1])
        return out
