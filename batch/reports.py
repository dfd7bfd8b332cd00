"""The page and the plot beside a report's JSON: where they go, which files may be replaced, writing.

``<report>.json`` gets ``<report>.html`` (one self-contained page: inline CSS and SVG, thumbnails
as data: URIs, nothing fetched) and ``<report>.png`` (the headline plot). A report location
without ``.json`` gets the suffixes appended.

Like the JSON, neither replaces a file twinfer did not write: an existing page must carry
``HTML_MARKER`` (a generator ``<meta>``, within its first ``MARKER_WITHIN`` bytes) and an existing
plot ``PNG_MARKER`` (a PNG ``tEXt`` chunk, ``Software``), else ``OutputRefused`` and nothing is
written. Both are checked before any work.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

from batch.ownership import OutputRefused
from batch.uris import S3Options, redact_uri, resolve

GENERATOR = "twinfer-report/1"
HTML_MARKER = f'<meta name="generator" content="{GENERATOR}">'.encode()
PNG_MARKER = b"tEXtSoftware\x00" + GENERATOR.encode()
MARKER_WITHIN = 64 * 1024  # both markers come first: a page's <head>, a PNG's chunks before its pixels
MARKERS = {"html": HTML_MARKER, "png": PNG_MARKER}


def companion_uris(report_uri: str) -> dict[str, str]:
    """``{"html": ..., "png": ...}`` beside ``report_uri`` (an S3 URI keeps its query)."""
    parts = urlsplit(report_uri)
    stem = parts.path.removesuffix(".json")
    return {kind: urlunsplit(parts._replace(path=f"{stem}.{kind}")) for kind in MARKERS}


def check_targets(report_uri: str, s3: S3Options | None = None) -> None:
    """Refuse (``OutputRefused``) if the page's or the plot's location holds a file twinfer did not write."""
    for kind, uri in companion_uris(report_uri).items():
        where = resolve(uri, s3)
        info = where.filesystem.get_file_info(where.path)
        if info.type == pafs.FileType.NotFound:
            continue
        head = b""
        if info.type == pafs.FileType.File:
            with where.filesystem.open_input_stream(where.path) as stream:
                head = stream.read(MARKER_WITHIN)
        if MARKERS[kind] not in head:
            raise OutputRefused(
                f"{redact_uri(uri)} exists and is not a twinfer report {kind.upper()}; nothing was written. "
                "Choose another report location (--output)"
            )


def write_reports(report: dict, report_uri: str, s3: S3Options | None = None) -> list[str]:
    """Write the page and the plot for ``report`` (an evaluation or a comparison); returns their URIs."""
    from batch.report_html import render_page
    from batch.report_png import render_png
    from batch.thumbnails import thumbnails

    uris = companion_uris(report_uri)
    examples = report.get("worst") or report.get("examples") or []
    page = render_page(report, thumbnails([e["path"] for e in examples], s3))
    for kind, data in (("html", page.encode()), ("png", render_png(report))):
        where = resolve(uris[kind], s3)
        with where.filesystem.open_output_stream(where.path) as stream:
            stream.write(data)
    return list(uris.values())
