"""Replication's pure decisions: the backoff between attempts, the status a queued copy reports, and the
configuration of destinations."""

from __future__ import annotations

import pytest

from registry.config.loading import from_dict
from registry.config.values import ConfigError
from registry.replication.runner import backoff, status_of
from storage.records import ReplicationTask

DESTINATION = {"region": "eu-west-1", "registry_id": "111111111111", "endpoint": "http://127.0.0.1:5001"}


def task(state: str, error: str | None = None, attempts: int = 1) -> ReplicationTask:
    return ReplicationTask(
        1, "eu-west-1/111111111111", "app", "sha256:" + "a" * 64, ("v1",), None, state, attempts, 0.0, error, 0.0, 0.0
    )


def test_backoff_doubles_up_to_its_cap_with_up_to_a_fifth_less_at_random():
    assert [backoff(n, 300, rand=lambda: 0.0) for n in (1, 2, 3, 4, 9, 10, 30)] == [1, 2, 4, 8, 256, 300, 300]
    assert backoff(3, 300, rand=lambda: 1.0) == pytest.approx(3.2)  # 4 s less 20%
    assert backoff(5, 5, rand=lambda: 0.0) == 5
    assert backoff(0, 300, rand=lambda: 0.0) == 1  # a first attempt that ended without counting


def test_status_of_a_queued_copy():
    assert status_of(task("pending", attempts=0)) == ("IN_PROGRESS", None)
    assert status_of(task("pending", attempts=1)) == ("IN_PROGRESS", None)  # running, nothing failed yet
    assert status_of(task("complete")) == ("COMPLETE", None)
    assert status_of(task("failed", "gone")) == ("FAILED", "gone")
    # A copy being retried says it failed, and why, and that it is retrying: COMPLETE follows when a retry works.
    assert status_of(task("pending", "http://127.0.0.1:5001: unreachable")) == (
        "FAILED",
        "http://127.0.0.1:5001: unreachable (retrying)",
    )
    status, why = status_of(task("stopped"))
    assert status == "FAILED" and "backfill was stopped" in str(why)


def destinations(*entries: dict[str, str], **replication: object) -> object:
    return from_dict({"replication": {"destinations": list(entries), **replication}}).replication


def test_destinations_are_configured_with_one_kind_of_credentials():
    config = destinations(
        {**DESTINATION, "access_key_id": "AKIAPEER", "secret_access_key": "s3cret"},
        {**DESTINATION, "region": "us-west-2", "username": "bot", "password": "pw"},
        {**DESTINATION, "registry_id": "222222222222"},  # an open registry: no credentials
        concurrency=2,
        retry_max_interval="5s",
    )
    moorage, oci_peer, open_peer = config.destinations  # type: ignore[attr-defined]
    assert (moorage.key, moorage.is_moorage) == ("eu-west-1/111111111111", True)
    assert (oci_peer.key, oci_peer.is_moorage, oci_peer.password.reveal()) == ("us-west-2/111111111111", False, "pw")
    assert open_peer.key == "eu-west-1/222222222222" and not open_peer.username
    assert (config.concurrency, config.retry_max_interval, config.retry_for) == (2, 5.0, 86400.0)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "entries, said",
    [
        ([{**DESTINATION, "access_key_id": "AKIAPEER"}], "access_key_id and secret_access_key go together"),
        ([{**DESTINATION, "username": "bot"}], "username and password go together"),
        (
            [{**DESTINATION, "access_key_id": "AKIA", "secret_access_key": "s", "username": "u", "password": "p"}],
            "not both",
        ),
        ([DESTINATION, DESTINATION], "are another's"),
        ([{**DESTINATION, "region": "us-east-1", "registry_id": "000000000000"}], "names this registry itself"),
        ([{**DESTINATION, "region": "mars"}], "replication.destinations[0].region"),
        ([{**DESTINATION, "endpoint": "ftp://x"}], "replication.destinations[0].endpoint"),
        ([{"region": "eu-west-1", "registry_id": "111111111111"}], "endpoint"),
    ],
)
def test_bad_destinations_are_refused_with_the_reason(entries: list[dict[str, str]], said: str):
    with pytest.raises(ConfigError) as e:
        destinations(*entries)
    assert said in str(e.value)
