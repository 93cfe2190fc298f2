"""Tiny PDFs written by hand for the paper tests: a few hundred bytes each, no PDF library needed."""

import io

PAPER_LINES = [
    [
        (18, "Mean Squares for Tiny Lists"),
        (11, "Ada Lovelace, Alan Turing"),
        (14, "1 Introduction"),
        (11, "We compute the mean of the squares of a list of numbers."),
        (11, "It is a small method with a large name."),
    ],
    [
        (14, "2 Method"),
        (12, "2.1 Squaring"),
        (11, "Square every value, then average them."),
        (14, "References"),
        (11, "[1] Someone. A book about squares."),
    ],
]


def make_pdf(pages: list[list[tuple[float, str]]], *, image_only: bool = False) -> bytes:
    """A PDF whose pages hold (font size, text) lines in Helvetica; image_only draws a picture instead."""
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    image = add(
        b"<< /Type /XObject /Subtype /Image /Width 2 /Height 2 /ColorSpace /DeviceGray "
        b"/BitsPerComponent 8 /Length 4 >>\nstream\n\x00\xff\xff\x00\nendstream"
    )
    contents = []
    for lines in pages:
        if image_only:
            ops = ["q 200 0 0 200 72 500 cm /Im1 Do Q"]
        else:
            ops, y = [], 750
            for size, text in lines:
                escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
                ops.append(f"BT /F1 {size} Tf 72 {y} Td ({escaped}) Tj ET")
                y -= size + 8
        stream = "\n".join(ops).encode("latin-1")
        contents.append(add(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"))
    pages_id = len(objects) + len(contents) + 1
    kids = [
        add(
            b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 %d 0 R >> "
            b"/XObject << /Im1 %d 0 R >> >> /Contents %d 0 R >>" % (pages_id, font, image, content)
        )
        for content in contents
    ]
    add(b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids)))
    catalog = add(b"<< /Type /Catalog /Pages %d 0 R >>" % pages_id)

    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    out.writelines(b"%010d 00000 n \n" % offset for offset in offsets)
    out.write(
        b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, catalog, xref)
    )
    return out.getvalue()


def paper_pdf() -> bytes:
    return make_pdf(PAPER_LINES)


def encrypted_pdf() -> bytes:
    import pypdf

    writer = pypdf.PdfWriter(clone_from=io.BytesIO(paper_pdf()))
    writer.encrypt("a-password", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def corrupt_pdf() -> bytes:
    data = paper_pdf()
    return data[: len(data) // 2]


def image_only_pdf() -> bytes:
    return make_pdf([[]], image_only=True)
