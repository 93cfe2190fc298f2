"""Serving the files a program saved (to_save/), for iterations and library examples alike.

The files are untrusted: only a listed, regular file inside the folder is served, never through a link
or `..`; images show inline, everything else downloads; no response can run script.
"""

import mimetypes
import os
import stat
from pathlib import Path

from django.http import FileResponse, Http404

INLINE_IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp", "image/svg+xml"}
# `sandbox` too: an SVG opened in a tab of its own must not run script either.
FILE_CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox"


def saved_file_response(folder: Path, listed: list, path: str) -> FileResponse:
    handle = _open_listed_file(folder, listed, path)
    content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    inline = content_type in INLINE_IMAGE_TYPES
    response = FileResponse(
        handle,
        as_attachment=not inline,
        filename=path.rsplit("/", 1)[-1],
        content_type=content_type if inline else "application/octet-stream",
    )
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = FILE_CSP
    return response


def _open_listed_file(folder: Path, listed: list, path: str):
    if path not in {entry.get("name") for entry in listed or [] if isinstance(entry, dict)}:
        raise Http404("No such saved file.")
    folder = folder.resolve()
    target = (folder / path).resolve()
    if not target.is_relative_to(folder) or target != Path(os.path.abspath(folder / path)):
        raise Http404("The file is outside the saved files' folder.")  # `..` or a symlink
    try:
        # O_NOFOLLOW: a file swapped for a symlink after the check above is still refused.
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        raise Http404("The file is gone.") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # a folder, a fifo, a device
        os.close(fd)
        raise Http404("Not a regular file.")
    return os.fdopen(fd, "rb")
