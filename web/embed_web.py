#!/usr/bin/env python3
"""Embeds the web pages (/docs, /dashboard) and their assets into the binary.

Usage: embed_web.py OUTPUT.c FILE...   (FILE: every file of web/ that SERVED names)

Writes the table of struct h_web_file (handlers/web.h): URL path, content type, bytes and a
strong ETag (a hash of the bytes), all computed here so that a request costs a lookup. gzip is
the HTTP layer's business (server/encoding.c), like for every other response. The inputs must be exactly the files SERVED names, and every page,
script or style sheet under web/ must be served, so nothing is left out of the binary.
"""
import hashlib
import os
import sys

WEB = os.path.dirname(os.path.realpath(__file__))

# URL path -> file under web/.
SERVED = {
    "/docs": "docs.html",
    "/docs/docs.js": "docs.js",
    "/docs/swagger-ui-bundle.js": "vendor/swagger-ui-dist/swagger-ui-bundle.js",
    "/docs/swagger-ui.css": "vendor/swagger-ui-dist/swagger-ui.css",
    "/dashboard": "dashboard.html",
    "/dashboard/dashboard.js": "dashboard.js",
    "/dashboard/dashboard.css": "dashboard.css",
    "/dashboard/chart.umd.js": "vendor/chart.js/chart.umd.js",
}

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}


def fail(message):
    sys.exit(f"embed_web.py: {message}")


def check_inputs(inputs):
    given = {os.path.relpath(os.path.realpath(p), WEB) for p in inputs}
    wanted = set(SERVED.values())
    if given != wanted:
        fail(f"inputs differ from SERVED: missing {sorted(wanted - given)}, "
             f"unexpected {sorted(given - wanted)} (keep meson.build and SERVED in step)")
    for root, _, names in os.walk(WEB):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), WEB)
            if os.path.splitext(name)[1] in CONTENT_TYPES and rel not in wanted:
                fail(f"web/{rel} is not served: add it to SERVED and meson.build")


def c_string(data):
    """data as C string literal lines; '?' escaped (no trigraphs), octal escapes 3 digits."""
    lines, line = [], []
    for b in data:
        c = chr(b)
        if c in '"\\?' or not 32 <= b < 127:
            line.append(f"\\{b:03o}")
        else:
            line.append(c)
        if len(line) >= 96 or b == 10:
            lines.append('    "' + "".join(line) + '"')
            line = []
    if line or not lines:
        lines.append('    "' + "".join(line) + '"')
    return "\n".join(lines)


def etag(data):
    return '"' + hashlib.sha256(data).hexdigest()[:20] + '"'


def main():
    output, inputs = sys.argv[1], sys.argv[2:]
    check_inputs(inputs)
    out = ["/* Generated from web/ by web/embed_web.py. */",
           '#include "handlers/web.h"', ""]
    rows = []
    for i, (url, rel) in enumerate(SERVED.items()):
        with open(os.path.join(WEB, rel), "rb") as f:
            body = f.read()
        out.append(f"static const char body_{i}[] =\n{c_string(body)};")
        ext = os.path.splitext(rel)[1]
        page = "true" if ext == ".html" else "false"
        tag = c_string(etag(body).encode()).strip()
        rows.append(f'    {{"{url}", "{CONTENT_TYPES[ext]}", {page}, body_{i}, '
                    f"sizeof(body_{i}) - 1, {tag}}},")
    out.append("")
    out.append("const struct h_web_file h_web_files[] = {")
    out.extend(rows)
    out.append("};")
    out.append(f"const size_t h_web_files_count = {len(rows)};")
    with open(output, "w", encoding="ascii") as f:
        f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
