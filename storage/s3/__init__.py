"""The S3 blob store (`storage.blobs.BlobStore` in a bucket of AWS S3 or an S3-compatible service).

Layout in the bucket, under the configured prefix (every key is built by `_blob_key`, `_session_prefix` or
`_chunk_key`)::

    <prefix>/
      blobs/
        sha256/
          ab/
            abcdef0123...          one object per blob, named by its hex digest, immutable once there
        sha512/
          ...
      uploads/
        <upload id>/
          session                  the session's marker (empty): the session exists while it does
          00000000000000000000     one object per chunk, named by the offset it starts at (20 digits, so
          00000000000000001000     that listing order is offset order); metadata: the chunk's sha256

And on each replica's local disk, its scratch space (the data dir's `uploads/`, see `storage.scratch`): a
writer's bytes land there first, hashed while they arrive, and become an object only once verified.

- A blob object appears atomically (PutObject, or CompleteMultipartUpload for one over PART_SIZE, uploaded
  in parts a few at a time): a reader never sees part of one. An object already there is not uploaded again.
  A write told the digest up front (a pull-through download) sends its parts while the bytes arrive, and
  completes the upload only once its commit verified them.
- Reads are (ranged) GETs. A whole-blob read is hashed while it streams and its last piece held back until the
  digest matches, so an object whose bytes do not match its digest is never served whole (`BlobCorrupt`). With
  `redirect` allowed and configured, `open` answers a presigned GET instead: the client fetches the bytes (and
  sends its own Range) from the bucket.
- Upload sessions keep no state on a replica between calls, so each request of one upload may land on another
  replica: a block of `resume_upload` (serialized across replicas by the lock `upload <id>`) spools its bytes
  to scratch and, when it is left without a commit, uploads them as the next chunk object. `upload_size` sums
  the chunks. A commit of a session that is one chunk whose recorded sha256 is the digest copies it server-side;
  any other commit streams the chunks (and the block's own bytes) through a hash into the blob's object (a
  multipart upload, completed only once the digest matched).
- The bucket never fills up; the scratch disk can: a write that finds it full raises `StorageFull` as the
  filesystem store does (a fresh write keeps nothing, a session's chunk is cut off, the session unchanged).
- An endpoint that cannot be reached (refused, timed out, 5xx after botocore's retries) raises
  `StorageUnavailable`: the web layer answers 503.
"""

from storage.s3.store import S3BlobStore

__all__ = ["S3BlobStore"]
