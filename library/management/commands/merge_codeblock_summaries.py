"""`manage.py merge_codeblock_summaries EXPORT CODEBLOCKS`: our codeblock export's summaries into CodeScientist's.

CodeScientist reads its summaries from codeblocks/codeblock_summaries.json and asks an LLM to summarise
every codeblock that has none there. Our export ships its summaries as codedistiller_summaries.json, so
that unpacking it into codeblocks/ never replaces CodeScientist's own; this merges them in, and
CodeScientist then spends no call on our examples.
"""

import json
import zipfile
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from library.export import CODESCIENTIST_SUMMARIES, SUMMARIES, merge_summaries


class Command(BaseCommand):
    help = (
        "Merge the summaries of a codeblock export (the ZIP, the folder it was unpacked in, or its "
        f"{SUMMARIES}) into CodeScientist's {CODESCIENTIST_SUMMARIES} (its codeblocks/ folder, or the file)."
    )

    def add_arguments(self, parser):
        parser.add_argument("export", type=Path, help=f"the export's ZIP, its folder, or its {SUMMARIES}")
        parser.add_argument("codeblocks", type=Path, help="CodeScientist's codeblocks/ folder, or the file")

    def handle(self, *args, export: Path, codeblocks: Path, **options):
        ours = read_summaries(export)
        target = codeblocks / CODESCIENTIST_SUMMARIES if codeblocks.is_dir() else codeblocks
        if not target.parent.is_dir():
            raise CommandError(
                f"There is no folder {target.parent}: give CodeScientist's codeblocks/ folder."
            )
        try:
            added, replaced, kept = merge_summaries(ours, target)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"{target}: {added} summaries added, {replaced} replaced, {kept} of its own kept.")


def read_summaries(export: Path) -> dict:
    try:
        if export.is_dir():
            text = (export / SUMMARIES).read_text(encoding="utf-8")
        elif zipfile.is_zipfile(export):
            with zipfile.ZipFile(export) as archive:
                text = archive.read(SUMMARIES).decode("utf-8")
        else:
            text = export.read_text(encoding="utf-8")
        summaries = json.loads(text)
    except KeyError:
        raise CommandError(
            f"{export} has no {SUMMARIES}: is it a codeblocks export (format=codeblocks)?"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandError(f"Cannot read summaries from {export}: {exc}") from None
    if not isinstance(summaries, dict) or not all(isinstance(value, dict) for value in summaries.values()):
        raise CommandError(f"{export} does not hold summaries keyed by codeblock name.")
    return summaries
