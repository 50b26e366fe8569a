"""What the console's lifecycle page shows: a repository's images with what its policy would do to each, as of
a given time, and why (the rule's priority, description and selection). No HTTP here.

The plan is the lifecycle service's own (`LifecycleService.plan`, which the scheduled sweep, `moorage lifecycle
preview --as-of` and StartLifecyclePolicyPreview use): evaluated at `as_of`, against the images as they are now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from registry import lifecycle
from registry.service.lifecycle import LifecycleService, Planned
from storage.records import ImageRecord

ROWS_MAX = 2000  # images drawn (newest first); the counts cover them all


@dataclass(frozen=True, slots=True)
class PreviewRow:
    image: ImageRecord
    action: str | None  # "expire" | "transition" | None (kept)
    rule: lifecycle.Rule | None  # the rule that acts on it


@dataclass(frozen=True, slots=True)
class Preview:
    as_of: float
    rows: list[PreviewRow]  # newest first, at most ROWS_MAX
    total: int  # images in the repository
    expiring: int
    archiving: int
    expiring_bytes: int

    @property
    def truncated(self) -> bool:
        return self.total > len(self.rows)


def rule_summary(rule: lifecycle.Rule) -> str:
    """A rule in words: what it selects, when, and what it does ("tagged prod* · more than 3 images ·
    expire")."""
    if rule.tag_status == "tagged":
        lists = [f"{prefix}*" for prefix in rule.tag_prefixes] + list(rule.tag_patterns)
        selection = "tagged " + " and ".join(lists)
    else:
        selection = rule.tag_status
    if rule.storage_class == "archive":
        selection += " (archived)"
    when = {
        "imageCountMoreThan": f"more than {rule.count_number} images",
        "sinceImagePushed": f"pushed more than {rule.count_number} days ago",
        "sinceImagePulled": f"not pulled for {rule.count_number} days",
        "sinceImageTransitioned": f"archived more than {rule.count_number} days ago",
    }.get(rule.count_type, f"{rule.count_type} {rule.count_number}")
    action = "archive" if rule.action == "transition" else "expire"
    return f"{selection} · {when} · {action}"


def preview(
    images: Sequence[ImageRecord], planned: Sequence[Planned], policy: lifecycle.Policy, as_of: float
) -> Preview:
    """The images newest first, each with the action planned for it and the rule behind it (pure)."""
    rules = {rule.priority: rule for rule in policy.rules}
    by_digest = {step.image.digest: step.action for step in planned}
    ordered = sorted(images, key=lambda image: (image.pushed_at, image.id), reverse=True)
    rows = []
    for image in ordered[:ROWS_MAX]:
        action = by_digest.get(image.digest)
        rows.append(
            PreviewRow(image, action.action if action else None, rules.get(action.rule_priority) if action else None)
        )
    expiring = [step for step in planned if step.action.action == "expire"]
    return Preview(
        as_of,
        rows,
        len(images),
        len(expiring),
        sum(1 for step in planned if step.action.action == "transition"),
        sum(step.image.image_size for step in expiring),
    )


class LifecycleData:
    def __init__(self, service: LifecycleService) -> None:
        self.service = service

    async def preview(self, repository: str, policy: lifecycle.Policy, as_of: float) -> Preview:
        planned = await self.service.plan(repository, policy, as_of)
        return preview(await self.service.images_of(repository), planned, policy, as_of)
