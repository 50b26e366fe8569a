"""Vulnerability scanning's engine: pure, synchronous library code, no I/O beyond reading the files it is given.

- `packages`: the `Package` an image holds;
- `inventory`: the packages of an image, read from its layer tarballs (dpkg, apk, Python, npm);
- `versions`: each ecosystem's version ordering (dpkg, PEP 440, semver, apk);
- `osv`: reading OSV exports (a zip of records, one record, a list);
- `matcher`: `VulnIndex`, OSV records indexed by package, and the `Finding`s for a set of packages.
"""
