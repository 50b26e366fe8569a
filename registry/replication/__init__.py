"""Replication: copying pushed images, byte-exact, to the destinations of the registry's replication configuration.

- `peer.py`: the push side of the Distribution API against a destination (another Moorage, reached with access
  keys through its ECR API's tokens, or any OCI registry).
- `copier.py`: one image's copy (its blobs, child manifests, the manifest, its tags and referrers).
- `runner.py`: the durable queue's runner (claims, retries with backoff, statuses) and the enqueueing of pushes.
- `backfill.py`: backfills, which queue the images that exist already.
- `operations.py`: the ECR operations (configuration, statuses, backfills).
"""
