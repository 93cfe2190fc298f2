"""ZIP archives written as they are sent: memory holds one chunk, never the archive.

Used for a run's output folder and for library exports; framework-free.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from django.utils import timezone


@dataclass
class Entry:
    """One file of an archive: text/bytes in memory, or a file on disk read as it is written."""

    name: str
    data: bytes | None = None
    path: Path | None = None
    date_time: tuple = field(default_factory=lambda: timezone.now().timetuple()[:6])


def zip_stream(entries: Iterable[Entry], *, chunk_size: int = 256 * 1024) -> Iterator[bytes]:
    """A ZIP written as it is sent: memory holds one chunk, never the archive."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for entry in entries:
            info = zipfile.ZipInfo(entry.name, date_time=entry.date_time)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            if entry.path is None:
                with archive.open(info, "w") as target:
                    target.write(entry.data or b"")
            else:
                try:
                    # O_NOFOLLOW: a file swapped for a link after the caller looked is still refused.
                    source = os.fdopen(os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW), "rb")
                except OSError:
                    continue
                with source, archive.open(info, "w", force_zip64=True) as target:
                    while chunk := source.read(chunk_size):
                        target.write(chunk)
                        yield sink.take()
            yield sink.take()
    yield sink.take()


class _Sink:
    """A write-only file for zipfile; what was written is taken by the response as it goes."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.offset = 0

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        self.offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self.offset

    def flush(self):
        pass

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data
