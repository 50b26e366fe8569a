"""Principals: IAM-style users with access keys and identity policies, from config or a generated admin.

With no `[[auth.principals]]` configured, the first start creates an `admin` principal allowed everything,
stores its keys in `<data_dir>/admin-credentials.json` (mode 0600), and later starts reuse it.
"""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass
from pathlib import Path

from registry.config import AuthConfig, Secret
from registry.iam_policy import Policy, parse_policy
from storage.files import atomic_write
from storage.metadata import SharedValues

ADMIN_FILE = "admin-credentials.json"
ADMIN_POLICY = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    access_key_id: str
    secret_access_key: Secret
    arn: str
    policies: tuple[Policy, ...]


def principal_arn(account_id: str, name: str) -> str:
    return f"arn:aws:iam::{account_id}:user/{name}"


class Directory:
    """Principals by access key id and by name."""

    def __init__(self, principals: list[Principal], created_admin: Path | None = None) -> None:
        self.by_access_key = {principal.access_key_id: principal for principal in principals}
        self.by_name = {principal.name: principal for principal in principals}
        self.created_admin = created_admin  # set on the start that generated the admin's keys

    def _with_created(self, created: Path | None) -> Directory:
        self.created_admin = created
        return self

    def secret_for(self, access_key_id: str) -> str | None:
        principal = self.by_access_key.get(access_key_id)
        return principal.secret_access_key.reveal() if principal else None

    @classmethod
    def load(cls, auth: AuthConfig, account_id: str, data_dir: Path) -> Directory:
        if not auth.enabled and not auth.principals:
            return cls([])
        if auth.principals:
            return cls(
                [
                    Principal(
                        declared.name,
                        declared.access_key_id,
                        declared.secret_access_key,
                        principal_arn(account_id, declared.name),
                        (parse_policy(declared.policy),),
                    )
                    for declared in auth.principals
                ]
            )
        path = data_dir / ADMIN_FILE
        created = None
        if path.exists():
            raw = json.loads(path.read_text())
        else:
            raw = generate_admin()
            write_private_json(path, raw)
            created = path
        admin = Principal(
            raw["name"],
            raw["access_key_id"],
            Secret(raw["secret_access_key"]),
            principal_arn(account_id, raw["name"]),
            (parse_policy(ADMIN_POLICY),),
        )
        return cls([admin], created)


SHARED_ADMIN = "admin-credentials"


async def load_shared_directory(auth: AuthConfig, account_id: str, data_dir: Path, shared: SharedValues) -> Directory:
    """`Directory.load` for replicas on a shared backend: the generated admin is generated once, in the shared
    store (so every replica accepts its keys), and written to this replica's data dir too (for `moorage
    credentials --data-dir`)."""
    if auth.principals or not auth.enabled:
        return Directory.load(auth, account_id, data_dir)
    generated = generate_admin()
    stored = await shared.put_value(SHARED_ADMIN, json.dumps(generated).encode(), replace=False)
    raw = json.loads(stored)
    path = data_dir / ADMIN_FILE
    created = None
    if not path.exists() or json.loads(path.read_text()) != raw:
        write_private_json(path, raw)
        created = path if raw == generated else None
    return Directory.load(auth, account_id, data_dir)._with_created(created)


def shared_admin_value(data_dir: Path) -> dict[str, bytes]:
    """A single machine's generated admin (`<data_dir>/admin-credentials.json`) as replicas keep it in the shared
    store, for `moorage migrate-storage`; empty when there is none. Raises ValueError for an unreadable file."""
    path = Path(data_dir) / ADMIN_FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
        fields = {key: str(raw[key]) for key in ("name", "access_key_id", "secret_access_key")}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} does not hold the generated admin's credentials: {e}") from None
    return {SHARED_ADMIN: json.dumps(fields).encode()}


def generate_admin() -> dict[str, str]:
    alphabet = string.ascii_uppercase + string.digits
    key_id = "AKIA" + "".join(secrets.choice(alphabet) for _ in range(16))
    secret = "".join(secrets.choice(string.ascii_letters + string.digits + "+/") for _ in range(40))
    return {"name": "admin", "access_key_id": key_id, "secret_access_key": secret}


def write_private_json(path: Path, data: dict[str, str]) -> None:
    """Written whole or not at all, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(data, indent=2) + "\n").encode(), mode=0o600)
