"""Finding a paper's sections: plain text, Markdown, and PDFs with and without an outline."""

import io

import pypdf

from distill.pipeline import papers
from tests.paper_pdfs import make_pdf

PLAIN_PAPER = """\
Planning Programs From Papers

Contents
1 Introduction .......... 1
2 Method ......... 2

Abstract
We plan programs from papers and run them.

1 Introduction
Papers are long. A Method that reads them all at once fails.

2 Method
We read each section on its own.

2.1 Planning
The plan has four parts. The lines below are an acronym table, not headings:
GPU CPU TPU
RAM DISK

EXPERIMENTAL SETUP
We use three papers.

A Appendix
Hyper-parameters: a learning rate of 0.1.
"""


def test_plain_text_finds_numbered_upper_case_and_named_headings_and_drops_the_contents():
    paper = papers.from_text(PLAIN_PAPER)

    assert [(s["title"], s["level"]) for s in paper.sections] == [
        ("Abstract", 1),
        ("1 Introduction", 1),
        ("2 Method", 1),
        ("2.1 Planning", 2),
        ("EXPERIMENTAL SETUP", 1),
        ("A Appendix", 1),
    ]
    assert "## A Appendix\nHyper-parameters" in paper.text and "### 2.1 Planning" in paper.text
    assert "......" not in paper.text, "the table of contents' lines are not text"
    assert "A Method that reads them" in paper.text and "GPU CPU TPU" in paper.text


def test_a_text_file_whose_hash_lines_are_not_headings_is_read_as_plain_text():
    text = "Counting Things\n\n1 Introduction\nWe count.\n# of samples: 40\n\n2 Method\nCount them, one by one.\n"
    paper = papers.from_file(text.encode(), filename="counting.txt")

    assert [s["title"] for s in paper.sections] == ["1 Introduction", "2 Method"]
    assert "## 2 Method" in paper.text


def test_markdown_headings_are_its_sections():
    text = "# Counting Things\n\n## Summary\nWe count.\n\n## Statement of need\nPeople count.\n\n### Usage\nCall it.\n"
    paper = papers.from_markdown(text)

    assert paper.title == "Counting Things"
    assert [(s["title"], s["level"]) for s in paper.sections] == [
        ("Summary", 1),
        ("Statement of need", 1),
        ("Usage", 2),
    ]


def with_outline(pdf: bytes, items: list[tuple[str, int, str | None]]) -> bytes:
    """The PDF with an outline: (title, page index, parent title or None)."""
    writer = pypdf.PdfWriter(clone_from=io.BytesIO(pdf))
    added = {}
    for title, page, parent in items:
        added[title] = writer.add_outline_item(title=title, page_number=page, parent=added.get(parent))
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_a_pdf_outline_gives_the_sections_even_at_body_size():
    pages = [
        [(11, "Body-Sized Paper"), (11, "Why we wrote this paper at all, at some length."),
         (11, "Motivation and Scope"), (11, "Our motivation, explained in several words here.")],
        [(11, "How It Works"), (11, "It works by reading carefully, one page at a time."),
         (11, "Details"), (11, "The details, in a sentence that is long enough.")],
    ]  # fmt: skip
    pdf = with_outline(
        make_pdf(pages),
        [("Body-Sized Paper", 0, None), ("Motivation and Scope", 0, "Body-Sized Paper"),
         ("How It Works", 1, "Body-Sized Paper"), ("Details", 1, "How It Works")],
    )  # fmt: skip

    paper = papers.from_pdf(pdf)

    assert [(s["title"], s["level"], s["page"]) for s in paper.sections] == [
        ("Motivation and Scope", 1, 1),
        ("How It Works", 1, 2),
        ("Details", 2, 2),
    ]
    assert "## How It Works\nIt works by reading" in paper.text and "### Details" in paper.text


def test_a_pdf_without_outline_drops_running_headers_footers_and_contents_lines():
    header, footer = (13, "Journal of Tiny Lists, Vol. 3"), (13, "Smith et al.")
    pages = [
        [(20, "Tiny Lists Revisited"), (11, "Contents"), (11, "1 Introduction . . . . . . . . 2"),
         (11, "2 Method . . . . . . . . . . 3"), (11, "A body line that is the body text of the page.")],
        [header, (14, "1 Introduction"), (11, "Lists are small, and this line is the body text."), footer,
         (11, "2")],
        [header, (14, "2 Method"), (11, "We measure them, and this line is body text as well."), footer,
         (11, "3")],
        [header, (14, "3 Results"), (11, "They are small indeed: this line is the body text."), footer,
         (11, "4")],
    ]  # fmt: skip
    paper = papers.from_pdf(make_pdf(pages))

    assert [(s["title"], s["page"]) for s in paper.sections] == [
        ("1 Introduction", 2),
        ("2 Method", 3),
        ("3 Results", 4),
    ]
    assert "Journal of Tiny Lists" not in paper.text and "Smith et al." not in paper.text
    assert ". . . ." not in paper.text
    assert paper.title == "Tiny Lists Revisited"


def test_a_joss_paper_takes_its_title_and_authors_from_its_front_matter():
    text = (
        "---\ntitle: 'counting: A Python package for counting'\nauthors:\n  - name: Ada Lovelace\n"
        "    affiliation: 1\n  - name: Alan Turing\n---\n\n# Summary\nWe count.\n\n# Statement of need\nPeople count.\n"
    )
    paper = papers.from_file(text.encode(), filename="paper.md")

    assert paper.title == "counting: A Python package for counting"
    assert paper.authors == "Ada Lovelace, Alan Turing"
    assert [(s["title"], s["level"]) for s in paper.sections] == [("Summary", 1), ("Statement of need", 1)]
