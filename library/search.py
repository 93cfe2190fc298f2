"""Search of the library: full text (SQLite FTS5, or Postgres full-text search), fused with semantic search.

The user's words never reach a query language as typed: `terms()` keeps letters and digits only, and each
word becomes a quoted phrase, so quotes, dashes, colons or stars in a query cannot make it fail.
Semantic search (library.semantic) ranks by meaning; reciprocal rank fusion merges both rankings. Without
the model installed, search is full text only.
"""

from __future__ import annotations

import re
import threading

from django.db import connection, transaction
from django.db.models import F, TextField
from django.db.models.functions import Cast, Substr
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from library import semantic

MAX_TERMS = 16
FTS_LIMIT = 1000  # the best full-text matches that take part in a ranking
SEMANTIC_LIMIT = 100
# Cosine similarity below this says little about meaning with MiniLM: such neighbours are not results.
SEMANTIC_MIN = 0.35
RRF_K = 60  # reciprocal rank fusion: score = Σ 1 / (k + rank)

# Column weights for bm25, in the order of the FTS5 table's columns.
WEIGHTS = {"title": 10.0, "summary": 5.0, "description": 3.0, "code": 1.0, "repository": 4.0, "tags": 6.0}
SNIPPET_TOKENS = 24
# Private markers for snippet()'s highlights: replaced by <mark> only after the text is escaped.
_OPEN, _CLOSE = "\ue000", "\ue001"
_MARKED = re.compile(f"{_OPEN}([^{_OPEN}{_CLOSE}]*){_CLOSE}")

_WORD = re.compile(r"\w+")
# Words too common to say anything; dropped from a query unless it has nothing else.
STOP_WORDS = frozenset(
    "a an and are as at be by for from how i in is it of on or the this to what when where which with".split()
)
_PART = re.compile(r"[^\W_]+")


def terms(q: str) -> list[list[str]]:
    """The query's words, each as its lower-cased parts: `mean_squared` is ["mean", "squared"]."""
    words = []
    for word in _WORD.findall(q or ""):
        parts = [part.lower() for part in _PART.findall(word)]
        if parts and parts not in words:
            words.append(parts)
    meaningful = [parts for parts in words if " ".join(parts) not in STOP_WORDS]
    return (meaningful or words)[:MAX_TERMS]


def fts_query(words: list[list[str]], *, any_word: bool = False) -> str:
    """An FTS5 query of quoted phrases (letters and digits only inside the quotes: nothing to escape)."""
    phrases = ['"' + " ".join(parts) + '"' for parts in words]
    return (" OR " if any_word else " ").join(phrases)


def ranked_ids(q: str, *, within, use_semantic: bool | None = None) -> list[int]:
    """Ids of the examples of the queryset `within` that match q, best first."""
    return list(relevance(q, within=within, use_semantic=use_semantic))


def relevance(q: str, *, within, use_semantic: bool | None = None) -> dict[int, float]:
    """{id: relevance} of the examples of `within` that match q, best first (dicts keep their order).

    The relevance is the fused reciprocal-rank score over its greatest possible value (first in every
    ranking): 1.0 for a hit first in them all, falling with rank. It orders the hits and says how far down
    a hit is; it is not a probability, nor comparable between two queries.
    """
    words = terms(q)
    if not words:
        return {}
    rankings = [_full_text_ids(words, within)]
    if use_semantic is None:
        use_semantic = semantic.available()
    if use_semantic:
        rankings.append(_semantic_ids(q, within))
    scores = fuse(rankings)
    best = len(rankings) / (RRF_K + 1)
    return {pk: round(score / best, 4) for pk, score in scores.items()}


def fuse(rankings: list[list[int]]) -> dict[int, float]:
    """Reciprocal rank fusion: {id: Σ 1 / (k + rank)}, best first."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, pk in enumerate(ranking, start=1):
            scores[pk] = scores.get(pk, 0.0) + 1.0 / (RRF_K + rank)
    return dict(sorted(scores.items(), key=lambda item: -item[1]))


# Full text --------------------------------------------------------------------------------------------


def _full_text_ids(words, within) -> list[int]:
    if connection.vendor == "postgresql":
        return _postgres_ids(words, within)
    allowed = _where(within)
    for any_word in (False, True):  # every word first; if nothing has them all, any of them
        sql = (
            f"SELECT library_example_fts.rowid FROM library_example_fts "
            # The unary + keeps the IN out of FTS5's plan: given it, FTS5 runs the whole match once per id.
            f"WHERE library_example_fts MATCH %s AND +library_example_fts.rowid IN ({allowed[0]}) "
            f"ORDER BY bm25(library_example_fts, {', '.join(str(w) for w in WEIGHTS.values())}) "
            f"LIMIT {FTS_LIMIT}"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, [fts_query(words, any_word=any_word), *allowed[1]])
            ids = [row[0] for row in cursor.fetchall()]
        if ids or len(words) == 1:
            return ids
    return ids


def _where(within) -> tuple[str, tuple]:
    """The queryset as a subquery of ids."""
    sql, params = within.order_by().values("pk").query.sql_with_params()
    return sql, params


def _postgres_ids(words, within) -> list[int]:
    from django.contrib.postgres.aggregates import StringAgg
    from django.contrib.postgres.search import SearchQuery, SearchRank, SearchVector
    from django.db.models import OuterRef, Subquery, Value
    from django.db.models.functions import Coalesce

    from library.models import Tag

    # Tags through a subquery: a join would repeat an example once per tag.
    tags = Subquery(
        Tag.objects.filter(examples=OuterRef("pk"))
        .order_by()
        .values("examples")
        .annotate(names=StringAgg("name", " "))
        .values("names")
    )
    vector = (
        SearchVector("title", weight="A", config="english")
        + SearchVector(
            "summary", Coalesce(tags, Value(""), output_field=TextField()), weight="B", config="english"
        )
        + SearchVector("description", "source_url", "source_title", weight="C", config="english")
        + SearchVector(Cast("files", TextField()), weight="D", config="english")
    )
    ids = []
    for any_word in (False, True):
        query = None
        for parts in words:
            # phrase: the parts of one word stay together; plain text, so no query syntax is ever parsed.
            part = SearchQuery(" ".join(parts), search_type="phrase", config="english")
            query = part if query is None else (query | part if any_word else query & part)
        ids = list(
            within.annotate(document=vector)
            .filter(document=query)  # @@: ts_rank alone gives non-matches a tiny non-zero rank
            .annotate(rank=SearchRank(F("document"), query))
            .order_by("-rank", "-pk")
            .values_list("pk", flat=True)[:FTS_LIMIT]
        )
        if ids or len(words) == 1:
            break
    return ids


def snippets(q: str, ids: list[int]) -> dict[int, SafeString]:
    """A short passage per example, the query's words in <mark>, the rest escaped."""
    words = terms(q)
    if not words or not ids:
        return {}
    if connection.vendor == "postgresql":
        return _postgres_snippets(words, ids)
    placeholders = ", ".join(["%s"] * len(ids))
    sql = (
        f"SELECT rowid, snippet(library_example_fts, -1, %s, %s, '…', {SNIPPET_TOKENS}) "
        f"FROM library_example_fts WHERE library_example_fts MATCH %s AND +rowid IN ({placeholders})"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [_OPEN, _CLOSE, fts_query(words, any_word=True), *ids])
        return {pk: mark(text) for pk, text in cursor.fetchall()}


def _postgres_snippets(words, ids) -> dict[int, SafeString]:
    from django.contrib.postgres.search import SearchHeadline, SearchQuery
    from django.db.models import Value
    from django.db.models.functions import Concat

    from library.models import Example

    query = None
    for parts in words:
        part = SearchQuery(" ".join(parts), search_type="phrase", config="english")
        query = part if query is None else query | part
    options = {"start_sel": _OPEN, "stop_sel": _CLOSE, "max_words": SNIPPET_TOKENS, "config": "english"}
    rows = Example.objects.filter(pk__in=ids).annotate(
        text=SearchHeadline(
            Concat(
                "summary",
                Value(" "),
                "description",
                Value(" "),
                Cast("files", TextField()),
                output_field=TextField(),
            ),
            query,
            **options,
        )
    )
    return {pk: mark(text) for pk, text in rows.values_list("pk", "text")}


def mark(text: str) -> SafeString:
    """Escape the text, then turn the private markers (and only balanced pairs of them) into <mark>."""
    escaped = escape(text or "")
    marked = _MARKED.sub(r"<mark>\1</mark>", escaped)
    return mark_safe(marked.replace(_OPEN, "").replace(_CLOSE, ""))


# Semantic ---------------------------------------------------------------------------------------------


def _semantic_ids(q: str, within) -> list[int]:
    import numpy as np

    # Examples are embedded when approved (or by `manage.py embed_examples`), never inside a search: one
    # without an embedding is found by full text only.
    ids, matrix = _vectors(within)
    if not ids:
        return []
    query = semantic.encode([q])[0]
    similarity = matrix @ query
    best = np.argsort(-similarity)[:SEMANTIC_LIMIT]
    return [ids[i] for i in best if similarity[i] >= SEMANTIC_MIN]


def embed_missing(queryset, *, limit: int | None = None) -> int:
    """Embed the examples of `queryset` that have no embedding yet; returns how many were done."""
    return embed(queryset.filter(embedding__isnull=True)[:limit])


def embed(queryset) -> int:
    """Compute the embeddings of the examples of `queryset` (again, if they have one); returns how many.

    semantic.encode runs them through the model in padded batches; the rows are written in one transaction.
    """
    import numpy as np

    todo = list(queryset.only("pk", "title", "summary").prefetch_related("tags"))
    if not todo:
        return 0
    vectors = semantic.encode([example.semantic_text for example in todo])
    with transaction.atomic():
        for example, vector in zip(todo, vectors, strict=True):
            # Only if the text is still the one embedded: an edit meanwhile cleared the embedding, and its
            # own embedding comes after it.
            type(example).objects.filter(pk=example.pk, title=example.title, summary=example.summary).update(
                embedding=np.asarray(vector, np.float32).tobytes()
            )
    return len(todo)


class _VectorCache:
    """Embeddings kept in memory: reading 10,000 blobs for every search would cost more than the search.

    Each is known by its id and its first bytes, so an embedding cleared and computed again (the text
    changed), or an id that a test database used before, is loaded afresh; only the first bytes are read
    per search.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.vectors: dict[tuple, object] = {}
        self.key = None
        self.matrix = None

    def get(self, within):
        import numpy as np

        rows = list(
            within.filter(embedding__isnull=False)
            .order_by("pk")
            .annotate(head=Substr("embedding", 1, 8))
            .values_list("pk", "head")
        )
        keys = [(pk, bytes(head)) for pk, head in rows]
        with self.lock:
            missing = [pk for pk, head in keys if (pk, head) not in self.vectors]
            for start in range(0, len(missing), 500):
                chunk = missing[start : start + 500]
                for pk, blob in within.model.objects.filter(pk__in=chunk).values_list("pk", "embedding"):
                    blob = bytes(blob)
                    self.vectors[(pk, blob[:8])] = np.frombuffer(blob, dtype=np.float32)
            if self.key != keys:
                self.key = keys
                self.matrix = (
                    np.stack([self.vectors[key] for key in keys])
                    if keys
                    else np.zeros((0, semantic.DIMENSIONS), np.float32)
                )
            if len(self.vectors) > 2 * len(keys) + 1000:  # forget what no search can see any more
                self.vectors = {key: self.vectors[key] for key in keys}
            return [pk for pk, _ in keys], self.matrix


_cache = _VectorCache()


def _vectors(within):
    return _cache.get(within)


def forget_embeddings(queryset) -> int:
    """Clear the embeddings of examples whose text changed: semantic search leaves them out (full text still
    finds them) until they are embedded again. Returns how many were cleared."""
    return queryset.exclude(embedding=None).update(embedding=None)
