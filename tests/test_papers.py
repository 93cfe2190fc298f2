"""Papers: reading them (PDF, Markdown, text, arXiv), planning, coding in order, the debug loop, the pages."""

import pytest

from distill.pipeline import papers
from tests.paper_pdfs import corrupt_pdf, encrypted_pdf, image_only_pdf, make_pdf, paper_pdf

MARKDOWN_PAPER = """\
# Mean Squares for Tiny Lists

Ada Lovelace, Alan Turing

## Abstract

We compute the mean of the squares of a list of numbers, a method with a large name.

## 1 Method

Square every value, then average them. The list is read from the configuration.

```python
# a heading inside code is not a section
```

## 2 Experiments

We run it on [1, 2, 3] and report the mean of squares, 14/3.

## References

[1] Someone. A book about squares.
"""


# Reading a paper ---------------------------------------------------------------------------------------


def test_a_pdf_keeps_its_title_authors_and_sections():
    paper = papers.from_pdf(paper_pdf(), filename="squares.pdf")

    assert paper.source == "pdf" and paper.pages == 2 and paper.filename == "squares.pdf"
    assert paper.title == "Mean Squares for Tiny Lists"
    assert paper.authors == "Ada Lovelace, Alan Turing"
    assert [(s["title"], s["level"], s["page"]) for s in paper.sections] == [
        ("1 Introduction", 1, 1),
        ("2 Method", 1, 2),
        ("2.1 Squaring", 2, 2),
        ("References", 1, 2),
    ]
    assert "## 1 Introduction\nWe compute the mean of the squares" in paper.text
    assert "### 2.1 Squaring" in paper.text


def test_headings_are_found_by_font_size_without_numbers():
    pdf = make_pdf([[(20, "A Title Set Large"), (11, "Body text that is long enough to be the body."),
                     (15, "Our Clever Idea"), (11, "More body text, and then some more body text.")]])  # fmt: skip
    paper = papers.from_pdf(pdf)
    assert paper.title == "A Title Set Large"
    assert [s["title"] for s in paper.sections] == ["Our Clever Idea"]


@pytest.mark.parametrize(
    "data, message",
    [
        (encrypted_pdf(), "encrypted"),
        (corrupt_pdf(), "could not be read; it may be damaged"),
        (image_only_pdf(), "no text layer"),
        (b"GIF89a not a pdf", "not a PDF"),
    ],
    ids=["encrypted", "corrupt", "image-only", "not-a-pdf"],
)
def test_an_unreadable_pdf_is_refused_clearly(data, message):
    with pytest.raises(papers.PaperRefused, match=message):
        papers.from_pdf(data)


def test_the_size_and_page_limits_are_enforced():
    with pytest.raises(papers.PaperRefused, match="larger than 1 MB"):
        papers.from_pdf(
            b"%PDF-1.4\n" + b"0" * (1024 * 1024), limits=papers.Limits(max_bytes=1024 * 1024, max_pages=100)
        )
    with pytest.raises(papers.PaperRefused, match="2 pages; the limit is 1"):
        papers.from_pdf(paper_pdf(), limits=papers.Limits(max_bytes=10**6, max_pages=1))


def test_the_limits_come_from_the_settings(settings):
    settings.DISTILL_MAX_PAPER_MB = 1
    settings.DISTILL_MAX_PAPER_PAGES = 7
    assert papers.Limits.from_settings() == papers.Limits(max_bytes=1024 * 1024, max_pages=7)


def test_markdown_keeps_its_headings_and_ignores_code():
    paper = papers.from_markdown(MARKDOWN_PAPER)
    assert paper.title == "Mean Squares for Tiny Lists"
    assert paper.authors == "Ada Lovelace, Alan Turing"
    assert [s["title"] for s in paper.sections] == ["Abstract", "1 Method", "2 Experiments", "References"]
    assert papers.looks_like_markdown(MARKDOWN_PAPER)


def test_plain_text_gets_headings_from_numbering_and_names():
    text = "Mean Squares\n\nAbstract\nWe square numbers and average them, carefully.\n\n1 Method\nSquare them.\n\n2.1 Data\nA list.\n"
    paper = papers.from_text(text)
    assert [(s["title"], s["level"]) for s in paper.sections] == [
        ("Abstract", 1),
        ("1 Method", 1),
        ("2.1 Data", 2),
    ]
    assert "## 1 Method" in paper.text and "### 2.1 Data" in paper.text
    assert not papers.looks_like_markdown(text)


def test_a_text_too_short_is_refused():
    with pytest.raises(papers.PaperRefused, match="too short"):
        papers.from_markdown("# Title\n\nshort")


def test_references_are_left_out_of_prompts_but_appendices_kept():
    text = "# T\n\n" + "body " * 100 + "\n\n## References\n[1] x\n\n## Appendix A\nDetails.\n"
    trimmed = papers.without_references(text)
    assert "[1] x" not in trimmed and "## Appendix A\nDetails." in trimmed and "body" in trimmed


@pytest.mark.parametrize(
    "url, identifier",
    [
        ("https://arxiv.org/abs/2504.17192", "2504.17192"),
        ("https://arxiv.org/pdf/2504.17192v2", "2504.17192v2"),
        ("https://arxiv.org/pdf/2504.17192v2.pdf", "2504.17192v2"),
        ("https://arxiv.org/abs/hep-th/9901001", "hep-th/9901001"),
    ],
)
def test_arxiv_links_give_their_identifier(url, identifier):
    assert papers.arxiv_id(url) == identifier


@pytest.mark.parametrize(
    "url",
    ["http://arxiv.org/abs/2504.17192", "https://evil.org/abs/2504.17192", "https://arxiv.org/list/cs",
     "https://user:pw@arxiv.org/abs/2504.17192", "https://arxiv.org:8443/abs/2504.17192",
     "https://arxiv.org/abs/../../etc/passwd"],
)  # fmt: skip
def test_other_links_are_refused(url):
    with pytest.raises(papers.PaperRefused):
        papers.arxiv_id(url)


def test_arxiv_out_of_reach_is_a_clear_error(monkeypatch):
    import urllib.error

    def unreachable(self, request, timeout=None):
        assert request.full_url == "https://arxiv.org/pdf/2504.17192" and timeout == papers.FETCH_TIMEOUT_SECS
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(papers.urllib.request.OpenerDirector, "open", unreachable)
    with pytest.raises(papers.PaperRefused, match="arXiv could not be reached from this server"):
        papers.from_arxiv("https://arxiv.org/abs/2504.17192")


def test_an_arxiv_pdf_is_read_within_the_size_limit(monkeypatch):
    class Response:
        headers = {"Content-Length": str(len(paper_pdf()))}

        def __init__(self, body):
            self.body = body

        def read(self, limit):
            return self.body[:limit]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(
        papers.urllib.request.OpenerDirector, "open", lambda self, r, timeout=None: Response(paper_pdf())
    )
    paper = papers.from_arxiv("https://arxiv.org/pdf/2504.17192.pdf")
    assert paper.source == "arxiv" and paper.url == "https://arxiv.org/abs/2504.17192"
    assert paper.title == "Mean Squares for Tiny Lists"

    big = Response(b"%PDF-" + b"0" * 2000)
    big.headers = {}
    monkeypatch.setattr(papers.urllib.request.OpenerDirector, "open", lambda self, r, timeout=None: big)
    with pytest.raises(papers.PaperRefused, match="larger than"):
        papers.from_arxiv(
            "https://arxiv.org/abs/2504.17192", limits=papers.Limits(max_bytes=1000, max_pages=10)
        )
