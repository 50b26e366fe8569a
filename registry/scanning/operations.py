"""The scans' ECR operations: StartImageScan, DescribeImageScanFindings (BASIC findings, or ENHANCED ones when
the registry's scan type is ENHANCED), and the scan fields of DescribeImages (`imageScanStatus`,
`imageScanFindingsSummary`)."""

from __future__ import annotations

import json
from typing import Any

from registry.errors import ImageArchived
from registry.scanning import findings as shapes
from registry.scanning.service import ScanService
from registry.service.ecr_shapes import Caller, answered_image_id, existing_image, offset_page
from registry.service.registry_settings import SCANNING
from storage.records import ImageRecord, ScanRecord

NOT_SCANNED = "The image has not been scanned: StartImageScan scans it, or a scan-on-push rule scans new pushes."


class ScanOperations:
    def __init__(self, scans: ScanService, *, account_id: str, region: str) -> None:
        self.scans = scans
        self.images = scans.images
        self.account_id = account_id
        self.region = region

    def _enhanced(self) -> bool:
        return (self.scans.settings.document(SCANNING) or {}).get("scanType") == "ENHANCED"

    async def start_image_scan(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        img = await existing_image(self.images, params["repositoryName"], params["imageId"], self.account_id)
        if img.archived:
            raise ImageArchived(f"The image {img.digest} is archived; restore it with UpdateImageStorageClass.")
        record = await self.scans.queue(params["repositoryName"], img.digest)
        return {
            "registryId": self.account_id,
            "repositoryName": params["repositoryName"],
            "imageId": answered_image_id(img, params["imageId"]),
            "imageScanStatus": {"status": record.status, "description": record.description},
        }

    async def describe_image_scan_findings(self, params: dict[str, Any], caller: Caller) -> dict[str, Any]:
        name = params["repositoryName"]
        img = await existing_image(self.images, name, params["imageId"], self.account_id)
        out: dict[str, Any] = {
            "registryId": self.account_id,
            "repositoryName": name,
            "imageId": answered_image_id(img, params["imageId"]),
        }
        scan = (await self.scans.meta.get_scans(name, [img.digest])).get(img.digest)
        if img.archived:  # ECR's status for an archived image (this operation does not list ImageArchivedException)
            out["imageScanStatus"] = {"status": "IMAGE_ARCHIVED", "description": "The image is archived."}
            out["imageScanFindings"] = {"findings": [], "findingSeverityCounts": {}}
            return out
        if scan is None:
            raise _scan_not_found(name, img)
        out["imageScanStatus"] = {"status": scan.status, "description": scan.description}
        if scan.status != "COMPLETE":
            return out
        found = json.loads(scan.findings)
        page, next_token = offset_page(found, params)
        summary: dict[str, Any] = {"findingSeverityCounts": shapes.severity_counts(found)}
        if scan.completed_at is not None:
            summary["imageScanCompletedAt"] = scan.completed_at
        if scan.database_updated_at is not None:
            summary["vulnerabilitySourceUpdatedAt"] = scan.database_updated_at
        if self._enhanced():
            observed = scan.completed_at or scan.started_at
            summary["enhancedFindings"] = [
                shapes.enhanced(
                    f,
                    account_id=self.account_id,
                    region=self.region,
                    repository=name,
                    digest=img.digest,
                    observed=observed,
                )
                for f in page
            ]
        else:
            summary["findings"] = [shapes.basic(f) for f in page]
        out["imageScanFindings"] = summary
        if next_token is not None:
            out["nextToken"] = next_token
        return out

    async def scan_details(self, repository: str, digests: list[str]) -> dict[str, dict[str, Any]]:
        """DescribeImages' scan fields, by digest, for the images that were scanned."""
        scans = await self.scans.meta.get_scans(repository, digests)
        return {digest: _detail(scan) for digest, scan in scans.items()}


def _detail(scan: ScanRecord) -> dict[str, Any]:
    out: dict[str, Any] = {"imageScanStatus": {"status": scan.status, "description": scan.description}}
    if scan.status == "COMPLETE":
        summary: dict[str, Any] = {"findingSeverityCounts": shapes.severity_counts(json.loads(scan.findings))}
        if scan.completed_at is not None:
            summary["imageScanCompletedAt"] = scan.completed_at
        if scan.database_updated_at is not None:
            summary["vulnerabilitySourceUpdatedAt"] = scan.database_updated_at
        out["imageScanFindingsSummary"] = summary
    return out


def _scan_not_found(name: str, img: ImageRecord) -> Exception:
    from registry.errors import ScanNotFound

    return ScanNotFound(
        f"Image scan does not exist for the image with '{{imageDigest:'{img.digest}', imageTag:'null'}}' in the "
        f"repository with name '{name}'. {NOT_SCANNED}"
    )
