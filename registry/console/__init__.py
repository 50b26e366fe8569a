"""The web console's model: what its pages show, without HTTP.

`views` turns records into what a page shows (pure: sizes, times, manifests, configs, image trees), `data`
gathers them from the services (the image service, the pull-through cache's rules), `session` is the sign-in's
pure part (CSRF tokens, the failed sign-in limiter). The operations pages have one module each: `cache` (rules
and their counters), `lifecycle_view` (a policy's preview on the images), `permissions` (who can pull / push),
`storage` (storage and health), with `charts` (the geometry of the server-drawn SVG charts, pure). The routes,
templates' rendering and cookies are in `registry.web.console`; the templates and static files are package data
here (`templates/`, `static/`).
"""

from __future__ import annotations

from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent / "templates"
STATIC = Path(__file__).resolve().parent / "static"
