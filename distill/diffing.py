"""Diffs between two versions of an iteration's files: pairing files (renames too), hunks, counts.

Plain Python over dicts of name -> text; the page's HTML comes from `distill.highlight`, which highlights
each side whole, so a diff line carries the same colours it has on the iteration page.
"""

from __future__ import annotations

import bisect
import difflib
from dataclasses import dataclass, field
from itertools import zip_longest

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from distill.highlight import highlight_lines, split_lines

CONTEXT_LINES = 3
# A removed file and an added one whose texts are this similar are one file, renamed (git uses 50%).
RENAME_RATIO = 0.6


@dataclass(frozen=True)
class Line:
    kind: str  # "context", "add" or "del"
    old_number: int | None
    new_number: int | None
    html: str
    old_html: str = ""  # context lines: the old side's text, which may differ in whitespace


@dataclass(frozen=True)
class Cell:
    kind: str
    number: int
    html: str


@dataclass(frozen=True)
class SplitRow:
    left: Cell | None
    right: Cell | None


@dataclass
class Hunk:
    old_start: int
    old_count: int
    new_start: int
    new_count: int
    lines: list[Line] = field(default_factory=list)

    @property
    def header(self) -> str:
        return f"@@ -{self.old_start},{self.old_count} +{self.new_start},{self.new_count} @@"

    @property
    def split_rows(self) -> list[SplitRow]:
        """Side by side: unchanged lines face each other, a run of removals faces the additions after it."""
        rows: list[SplitRow] = []
        removed: list[Cell] = []
        added: list[Cell] = []

        def flush():
            rows.extend(SplitRow(left, right) for left, right in zip_longest(removed, added))
            removed.clear()
            added.clear()

        for line in self.lines:
            if line.kind == "del":
                if added:
                    flush()
                removed.append(Cell("del", line.old_number, line.html))
            elif line.kind == "add":
                added.append(Cell("add", line.new_number, line.html))
            else:
                flush()
                rows.append(
                    SplitRow(
                        Cell("context", line.old_number, line.old_html or line.html),
                        Cell("context", line.new_number, line.html),
                    )
                )
        flush()
        return rows


@dataclass
class FileDiff:
    old_name: str | None
    new_name: str | None
    status: str  # "modified", "unchanged", "added", "removed" or "renamed"
    added: int = 0
    removed: int = 0
    hunks: list[Hunk] = field(default_factory=list)
    similarity: float | None = None  # for renames

    @property
    def name(self) -> str:
        return self.new_name if self.new_name is not None else self.old_name

    @property
    def similarity_percent(self) -> int | None:
        return None if self.similarity is None else round(self.similarity * 100)

    # The rows are built here rather than in a template loop, which takes seconds on 10,000 changed lines.
    # Only our own kinds, numbers, escaped hunk headers and pygments' (escaped) output go in.

    def unified_html(self) -> SafeString:
        out = []
        for hunk in self.hunks:
            out.append(f'<tbody><tr class="diff__hunk"><td colspan="3">{escape(hunk.header)}</td></tr>')
            out.extend(
                f'<tr class="diff--{line.kind}"><td class="diff__num">{_number(line.old_number)}</td>'
                f'<td class="diff__num">{_number(line.new_number)}</td><td class="diff__text">{line.html}</td></tr>'
                for line in hunk.lines
            )
            out.append("</tbody>")
        return mark_safe("\n".join(out))

    def split_html(self) -> SafeString:
        out = []
        for hunk in self.hunks:
            out.append(f'<tbody><tr class="diff__hunk"><td colspan="4">{escape(hunk.header)}</td></tr>')
            out.extend(f"<tr>{_cell(row.left)}{_cell(row.right)}</tr>" for row in hunk.split_rows)
            out.append("</tbody>")
        return mark_safe("\n".join(out))


def _number(number: int | None) -> str:
    return "" if number is None else str(number)


def _cell(cell: Cell | None) -> str:
    if cell is None:
        return '<td class="diff__num diff--none"></td><td class="diff__text diff--none"></td>'
    return (
        f'<td class="diff__num diff--{cell.kind}">{cell.number}</td>'
        f'<td class="diff__text diff--{cell.kind}">{cell.html}</td>'
    )


@dataclass
class Diff:
    files: list[FileDiff]

    @property
    def added(self) -> int:
        return sum(f.added for f in self.files)

    @property
    def removed(self) -> int:
        return sum(f.removed for f in self.files)

    @property
    def changed_files(self) -> list[FileDiff]:
        return [f for f in self.files if f.status != "unchanged"]

    @property
    def unchanged_files(self) -> list[FileDiff]:
        return [f for f in self.files if f.status == "unchanged"]


class _PatienceMatcher(difflib.SequenceMatcher):
    """difflib's opcodes over patience-diff matching blocks.

    difflib alone goes quadratic when every other line changed (5,000 lines took seconds): it takes the
    first longest match and recurses on nearly the whole rest. Patience diff anchors on the lines that
    occur once on each side, in order, then diffs the small gaps between anchors; gaps without such lines
    fall back to difflib. It also reads better: functions stay matched to themselves.
    """

    def get_matching_blocks(self):
        if self.matching_blocks is not None:
            return self.matching_blocks
        a, b = self.a, self.b
        found: list[tuple[int, int]] = []  # (i, j) of single matching lines, in no particular order
        regions = [(0, len(a), 0, len(b))]
        while regions:
            alo, ahi, blo, bhi = regions.pop()
            while alo < ahi and blo < bhi and a[alo] == b[blo]:
                found.append((alo, blo))
                alo, blo = alo + 1, blo + 1
            while alo < ahi and blo < bhi and a[ahi - 1] == b[bhi - 1]:
                ahi, bhi = ahi - 1, bhi - 1
                found.append((ahi, bhi))
            if alo == ahi or blo == bhi:
                continue
            anchors = _unique_common_in_order(a, alo, ahi, b, blo, bhi)
            if not anchors:
                gap = difflib.SequenceMatcher(None, a[alo:ahi], b[blo:bhi])
                for i, j, size in gap.get_matching_blocks():
                    found.extend((alo + i + k, blo + j + k) for k in range(size))
                continue
            for i, j in anchors:
                found.append((i, j))
                regions.append((alo, i, blo, j))
                alo, blo = i + 1, j + 1
            regions.append((alo, ahi, blo, bhi))
        found.sort()
        blocks: list[list[int]] = []
        for i, j in found:
            if blocks and blocks[-1][0] + blocks[-1][2] == i and blocks[-1][1] + blocks[-1][2] == j:
                blocks[-1][2] += 1
            else:
                blocks.append([i, j, 1])
        blocks.append([len(a), len(b), 0])
        self.matching_blocks = [difflib.Match(*block) for block in blocks]
        return self.matching_blocks


def _unique_common_in_order(a, alo, ahi, b, blo, bhi) -> list[tuple[int, int]]:
    """The longest in-order run of lines that occur exactly once in a[alo:ahi] and once in b[blo:bhi]."""
    seen_a: dict[str, int | None] = {}
    for i in range(alo, ahi):
        seen_a[a[i]] = None if a[i] in seen_a else i
    seen_b: dict[str, int | None] = {}
    for j in range(blo, bhi):
        seen_b[b[j]] = None if b[j] in seen_b else j
    pairs = sorted(
        (i, seen_b[line]) for line, i in seen_a.items() if i is not None and seen_b.get(line) is not None
    )
    # Patience sorting: the longest increasing run of j, with links back to rebuild it.
    tops: list[int] = []  # j at the top of each pile
    top_index: list[int] = []  # index into pairs of that top
    back: list[int] = []
    for index, (_, j) in enumerate(pairs):
        pile = bisect.bisect_left(tops, j)
        back.append(top_index[pile - 1] if pile else -1)
        if pile == len(tops):
            tops.append(j)
            top_index.append(index)
        else:
            tops[pile] = j
            top_index[pile] = index
    run = []
    index = top_index[-1] if top_index else -1
    while index != -1:
        run.append(pairs[index])
        index = back[index]
    return run[::-1]


def normalise_whitespace(line: str) -> str:
    return " ".join(line.split())


def similarity(old_text: str, new_text: str) -> float:
    """How alike two texts are, 0..1, by their lines (difflib's ratio)."""
    old_lines, new_lines = split_lines(old_text), split_lines(new_text)
    if not old_lines and not new_lines:
        return 1.0
    matcher = _PatienceMatcher(None, old_lines, new_lines)
    # The cheap upper bounds first: most unrelated pairs stop here.
    if matcher.real_quick_ratio() <= RENAME_RATIO or matcher.quick_ratio() <= RENAME_RATIO:
        return matcher.quick_ratio()
    return matcher.ratio()


def pair_files(old: dict[str, str], new: dict[str, str]) -> list[tuple[str | None, str | None, float | None]]:
    """(old name, new name, similarity for renames): files by name, then removed+added pairs as renames."""
    pairs: list[tuple[str | None, str | None, float | None]] = [
        (name, name, None) for name in sorted(old.keys() & new.keys())
    ]
    removed = sorted(old.keys() - new.keys())
    added = sorted(new.keys() - old.keys())
    candidates = sorted(
        (
            (score, old_name, new_name)
            for old_name in removed
            for new_name in added
            if (score := similarity(old[old_name], new[new_name])) > RENAME_RATIO
        ),
        key=lambda item: (-item[0], item[1], item[2]),
    )
    renamed_from: set[str] = set()
    renamed_to: set[str] = set()
    for score, old_name, new_name in candidates:
        if old_name not in renamed_from and new_name not in renamed_to:
            pairs.append((old_name, new_name, score))
            renamed_from.add(old_name)
            renamed_to.add(new_name)
    pairs += [(name, None, None) for name in removed if name not in renamed_from]
    pairs += [(None, name, None) for name in added if name not in renamed_to]
    return sorted(pairs, key=lambda pair: pair[1] if pair[1] is not None else pair[0])


def diff_texts(
    old_text: str,
    new_text: str,
    *,
    old_name: str = "",
    new_name: str = "",
    ignore_whitespace: bool = False,
    context: int = CONTEXT_LINES,
) -> tuple[list[Hunk], int, int]:
    """(hunks, lines added, lines removed) between two texts.

    With `ignore_whitespace`, lines are compared with their whitespace normalised and shown as written
    (the new side's text for lines that match).
    """
    old_lines, new_lines = split_lines(old_text), split_lines(new_text)
    if ignore_whitespace:
        old_keys = [normalise_whitespace(line) for line in old_lines]
        new_keys = [normalise_whitespace(line) for line in new_lines]
    else:
        old_keys, new_keys = old_lines, new_lines
    matcher = _PatienceMatcher(None, old_keys, new_keys)
    opcodes = matcher.get_opcodes()
    added = sum(j2 - j1 for tag, _, _, j1, j2 in opcodes if tag in ("insert", "replace"))
    removed = sum(i2 - i1 for tag, i1, i2, _, _ in opcodes if tag in ("delete", "replace"))
    if not added and not removed:
        return [], 0, 0

    old_html = highlight_lines(old_name or new_name, old_text)
    new_html = highlight_lines(new_name or old_name, new_text)
    hunks = []
    for group in matcher.get_grouped_opcodes(context):
        first, last = group[0], group[-1]
        hunk = Hunk(
            old_start=first[1] + 1 if last[2] > first[1] else first[1],
            old_count=last[2] - first[1],
            new_start=first[3] + 1 if last[4] > first[3] else first[3],
            new_count=last[4] - first[3],
        )
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                hunk.lines += [
                    Line("context", i + 1, j + 1, new_html[j], old_html[i])
                    for i, j in zip(range(i1, i2), range(j1, j2), strict=True)
                ]
                continue
            hunk.lines += [Line("del", i + 1, None, old_html[i]) for i in range(i1, i2)]
            hunk.lines += [Line("add", None, j + 1, new_html[j]) for j in range(j1, j2)]
        hunks.append(hunk)
    return hunks, added, removed


def diff_files(old: dict[str, str], new: dict[str, str], *, ignore_whitespace: bool = False) -> Diff:
    """Every file of either version, paired and diffed; unchanged files are listed with no hunks."""
    files = []
    for old_name, new_name, score in pair_files(old, new):
        old_text = str(old[old_name]) if old_name is not None else ""
        new_text = str(new[new_name]) if new_name is not None else ""
        hunks, added, removed = diff_texts(
            old_text,
            new_text,
            old_name=old_name or "",
            new_name=new_name or "",
            ignore_whitespace=ignore_whitespace,
        )
        if old_name is None:
            status = "added"
        elif new_name is None:
            status = "removed"
        elif old_name != new_name:
            status = "renamed"
        else:
            status = "modified" if hunks else "unchanged"
        files.append(FileDiff(old_name, new_name, status, added, removed, hunks, score))
    return Diff(files)


def choose_pair(numbers: list[int], a: str | None, b: str | None) -> tuple[int | None, int | None, str]:
    """(a, b, problem) from the page's parameters; problem is empty when both name iterations that exist.

    Defaults: b is the latest iteration and a the one before b.
    """
    if len(numbers) < 2:
        return None, None, "This run has fewer than two iterations: there is nothing to compare yet."
    parsed = {}
    for key, raw in (("a", a), ("b", b)):
        if raw in (None, ""):
            continue
        raw = raw.strip()
        if not raw.isdecimal() or not raw.isascii():
            return None, None, f"“{key}” must be an iteration number."
        parsed[key] = int(raw)
        if parsed[key] not in numbers:
            return None, None, f"This run has no iteration {parsed[key]}."
    new = parsed.get("b", numbers[-1])
    if "a" in parsed:
        old = parsed["a"]
    else:
        earlier = [n for n in numbers if n < new]
        old = earlier[-1] if earlier else None
        if old is None:
            return (
                None,
                None,
                f"Iteration {new} is the first one: choose another iteration to compare it with.",
            )
    if old == new:
        return None, None, "Choose two different iterations to compare."
    return old, new, ""
