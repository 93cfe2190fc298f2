"""The library's filters, defined once: what a search and its facets mean, for every reader of the library.

The library page, its export, the JSON API, the MCP server and the review queues all parse their query
parameters into one `LibraryFilters` and let it choose and order the examples, so that what a page lists
is exactly what its export, its API query and its review queue hold, in the same order:

    filters = LibraryFilters.parse(request.GET)      # never raises; the bad parameters are in .errors
    filters.check()                                  # BadParameter naming the first bad one (API, export)
    examples = Example.objects.listed().matching(filters)   # a QuerySet, in the chosen order
    filters.as_params()                              # the filters back as query parameters, for links

Semantics: `model` matches the code model or the fast model; `language` and `example_type` ignore case;
several `tag`s must all be present; `requirement` matches a package name as pip compares them; a search
(`q`) ranks among the whole queryset before the facets narrow it (see `search`), and each hit carries its
`relevance`. An empty value is the same as an absent parameter.

`PARAMS` are the parameters the filters read: the readers that refuse any other one (the API, the export)
accept these and their own.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from django.db.models import Case, Count, F, FloatField, IntegerField, Q, QuerySet, Value, When
from django.db.models.functions import Lower
from django.utils.text import slugify

from library import search
from library.models import HEALTH_BANDS, SCORE_BANDS, USAGE_BANDS

# The orders; relevance needs a query, and without one is newest first.
SORTS = {"relevance": "Relevance", "newest": "Newest", "score": "Best scored"}
MAX_QUERY = 500
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")
# A distribution name as `requirement` takes it (PEP 508's names).
DISTRIBUTION_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")


class BadParameter(ValueError):
    """A query parameter that cannot be understood; the message names it, in one line."""


@dataclass(frozen=True)
class LibraryFilters:
    """A search, its facets and its order. Empty fields do not filter."""

    q: str = ""
    tags: tuple[str, ...] = ()
    language: str = ""
    example_type: str = ""
    gpu: bool | None = None
    model: str = ""
    source: str = ""
    requirement: str = ""  # a package name, as in requirements.txt
    min_score: float | None = None
    score: str = ""  # a key of models.SCORE_BANDS
    usage: str = ""  # a key of models.USAGE_BANDS
    health: str = ""  # a key of models.HEALTH_BANDS: the verdict of the example's last check
    sort: str = ""  # a key of SORTS; empty: relevance with a query, newest without
    # Why a parameter was left out: (parameter, message), in the order they were read.
    errors: tuple[tuple[str, str], ...] = dataclasses.field(default=(), compare=False)

    # Reading and writing parameters ----------------------------------------------------------------------

    @classmethod
    def parse(cls, params: Mapping) -> LibraryFilters:
        """Filters from query parameters (a QueryDict or a plain dict, whose `tag` may be a list).

        Never raises: a bad value is left out and its reason kept in `errors`, so that a page can show what
        it could and say what it ignored, and the API can refuse (`check`).
        """
        errors = []
        tags = params.getlist("tag") if hasattr(params, "getlist") else _as_list(params.get("tag"))
        gpu = _text(params, "gpu").lower()
        if gpu and gpu not in TRUE + FALSE:
            errors.append(("gpu", f"gpu must be true or false, not {_text(params, 'gpu')!r}"))
        min_score = _text(params, "min_score")
        try:
            min_score = float(min_score) if min_score else None
        except ValueError:
            errors.append(("min_score", f"min_score must be a number, not {min_score!r}"))
            min_score = None
        # float() takes nan, inf and 1e999: no score compares with them, and JSON has no such numbers.
        if min_score is not None and not math.isfinite(min_score):
            errors.append(
                ("min_score", f"min_score must be a finite number, not {_text(params, 'min_score')!r}")
            )
            min_score = None
        requirement = _text(params, "requirement")
        if requirement and not DISTRIBUTION_NAME.match(requirement):
            errors.append(
                ("requirement", f"requirement must be a package name such as numpy, not {requirement!r}")
            )
            requirement = ""
        choices = {}
        for key, allowed in (
            ("score", SCORE_BANDS),
            ("usage", USAGE_BANDS),
            ("health", HEALTH_BANDS),
            ("sort", SORTS),
        ):
            choices[key] = _text(params, key)
            if choices[key] and choices[key] not in allowed:
                errors.append((key, f"{key} must be one of {', '.join(allowed)}, not {choices[key]!r}"))
                choices[key] = ""
        return cls(
            q=_text(params, "q")[:MAX_QUERY],
            tags=tuple(sorted({slugify(str(tag)) for tag in tags if slugify(str(tag))})),
            language=_text(params, "language"),
            # `type` is how the library page spelled it before: its old links keep working.
            example_type=_text(params, "example_type") or _text(params, "type"),
            gpu=None if gpu not in TRUE + FALSE else gpu in TRUE,
            model=_text(params, "model"),
            source=_text(params, "source"),
            requirement=requirement,
            min_score=min_score,
            errors=tuple(errors),
            **choices,
        )

    def check(self) -> LibraryFilters:
        """These filters, or BadParameter with the first error: for the API and the export, which refuse."""
        if self.errors:
            raise BadParameter(self.errors[0][1])
        return self

    def as_params(self) -> dict:
        """The filters that are set, as query parameters (`tag` a list): for links, and to say what was asked."""
        params = {
            "q": self.q,
            "tag": list(self.tags),
            "language": self.language,
            "example_type": self.example_type,
            "gpu": None if self.gpu is None else str(self.gpu).lower(),
            "model": self.model,
            "source": self.source,
            "requirement": self.requirement,
            "min_score": self.min_score,
            "score": self.score,
            "usage": self.usage,
            "health": self.health,
            "sort": self.sort,
        }
        return {key: value for key, value in params.items() if value not in ("", None, [])}

    def without(self, param: str) -> LibraryFilters:
        """The same filters but the one read from `param`, e.g. for a facet that counts its other values."""
        return dataclasses.replace(self, **{PARAM_FIELDS[param]: EMPTY[PARAM_FIELDS[param]]})

    @property
    def order(self) -> str:
        """The order that applies: relevance needs a query."""
        if self.sort and (self.sort != "relevance" or self.q):
            return self.sort
        return "relevance" if self.q else "newest"

    # Choosing examples ------------------------------------------------------------------------------------

    def matching(self, queryset: QuerySet) -> QuerySet:
        """The examples of `queryset` that match, in the chosen order. `ExampleQuerySet.matching` calls it."""
        found, ranked = self.search(queryset)
        return self.ordered(self.narrow(found), ranked)

    def search(self, queryset: QuerySet) -> tuple[QuerySet, dict[int, float] | None]:
        """The examples of `queryset` that the words of `q` find (all of them without `q`), and their
        relevance by id, best first (`search.relevance`; None without `q`).

        Ranked among the whole of `queryset`, before the facets narrow it: ranking only the narrowed examples
        would find other matches (the any-word fallback, the semantic neighbours' cut-off) than the page lists.
        """
        if not self.q:
            return queryset, None
        ranked = search.relevance(self.q, within=queryset)
        return queryset.filter(pk__in=list(ranked)), ranked

    def narrow(self, queryset: QuerySet) -> QuerySet:
        """`queryset` narrowed by the facets (everything but the search and the order)."""
        for tag in self.tags:
            queryset = queryset.filter(tags__name=tag)
        if self.language:
            queryset = queryset.filter(language__iexact=self.language)
        if self.example_type:
            queryset = queryset.filter(example_type__iexact=self.example_type)
        if self.gpu is not None:
            queryset = queryset.filter(gpu_required=self.gpu)
        if self.model:
            queryset = queryset.filter(Q(model_code=self.model) | Q(model_fast=self.model))
        if self.source:
            queryset = queryset.filter(source_url=self.source)
        if self.requirement:
            queryset = queryset.requiring(self.requirement)
        if self.min_score is not None:
            queryset = queryset.filter(score__gte=self.min_score)
        return queryset.score_band(self.score).usage_band(self.usage).health_band(self.health)

    def ordered(self, queryset: QuerySet, ranked: dict[int, float] | None) -> QuerySet:
        """`queryset` in the chosen order; `ranked` is what `search` gave. Ties go to the newer id.

        With a query, each example carries its `relevance` in every order, so that an agent sorting by score
        still sees how well each hit matched (at most search.FTS_LIMIT + SEMANTIC_LIMIT ids, so the SQL
        stays small)."""
        if ranked is not None:
            queryset = queryset.annotate(
                relevance=Case(
                    *(When(pk=pk, then=Value(score)) for pk, score in ranked.items()),
                    default=Value(None),
                    output_field=FloatField(),
                )
            )
        order = self.order
        if order == "relevance":
            rank = Case(
                *(When(pk=pk, then=Value(position)) for position, pk in enumerate(ranked or {})),
                default=Value(len(ranked or {})),
                output_field=IntegerField(),
            )
            return queryset.order_by(rank, "-pk")
        if order == "score":
            return queryset.best_scored_first()
        return queryset.order_by("-approved_at", "-pk")


# The field each parameter sets, and what "not set" is for it.
PARAM_FIELDS = {
    "q": "q", "tag": "tags", "language": "language", "example_type": "example_type", "type": "example_type",
    "gpu": "gpu", "model": "model", "source": "source", "requirement": "requirement", "min_score": "min_score",
    "score": "score", "usage": "usage", "health": "health", "sort": "sort",
}  # fmt: skip
EMPTY = {field.name: field.default for field in dataclasses.fields(LibraryFilters)}
# The query parameters the filters read (`type` is example_type's former spelling).
PARAMS = tuple(PARAM_FIELDS)


def _text(params: Mapping, key: str) -> str:
    value = params.get(key)
    if isinstance(value, list | tuple):  # a plain dict may hold a list where a QueryDict gives the last value
        value = value[-1] if value else None
    return "" if value is None else str(value).strip()


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


# Facets: the page's counts of each filter's values ------------------------------------------------------


@dataclass(frozen=True)
class Facet:
    """One filter as the library page shows it: its parameter, a label, and its values with their counts."""

    param: str
    label: str
    field: str = ""
    bands: dict | None = None
    top: int = 12

    def chosen(self, filters: LibraryFilters) -> list[str]:
        """The values of this facet that `filters` holds, spelled as the parameter is."""
        value = filters.as_params().get(self.param)
        return [] if value is None else [str(v) for v in _as_list(value)]

    def counts(self, queryset) -> list[tuple[str, str, int]]:
        """(value, label, number of examples that choosing it gives), the most frequent first; values with
        none are left out."""
        if self.bands is not None:
            totals = queryset.aggregate(
                **{key: Count("pk", filter=q) for key, (_label, q) in self.bands.items()}
            )
            return [(key, self.bands[key][0], totals[key]) for key in self.bands if totals[key]]
        if self.param == "gpu":
            rows = queryset.values_list("gpu_required").annotate(n=Count("pk")).order_by("-n", "gpu_required")
            return [
                ("true" if value else "false", "needs a GPU" if value else "CPU only", n) for value, n in rows
            ]
        if self.param == "model":
            totals = self._model_counts(queryset)
        else:
            # Values that differ only in case are one value, as the filter matches them.
            key = Lower(self.field) if self.param in ("language", "example_type") else F(self.field)
            rows = (
                queryset.exclude(**{self.field: ""})
                .values_list(key)
                # Only the tags' join can repeat an example.
                .annotate(n=Count("pk", distinct=self.param == "tag"))
            )
            totals = Counter(dict(rows))
        found = [(value, n) for value, n in totals.items() if value is not None and n > 0]
        best = sorted(found, key=lambda item: (-item[1], item[0]))[: self.top]
        return [(value, self.label_of(value), n) for value, n in best]

    @staticmethod
    def _model_counts(queryset) -> Counter:
        """Examples per model, written by it as the code model or the fast model (counted once if both)."""
        totals: Counter = Counter()
        for field in ("model_code", "model_fast"):
            totals.update(dict(queryset.exclude(**{field: ""}).values_list(field).annotate(n=Count("pk"))))
        both = queryset.exclude(model_code="").filter(model_code=F("model_fast"))
        totals.subtract(dict(both.values_list("model_code").annotate(n=Count("pk"))))
        return totals

    def label_of(self, value: str) -> str:
        if self.param == "source":
            return value.removeprefix("https://").removeprefix("github.com/")
        if self.param == "gpu":
            return "needs a GPU" if value == "true" else "CPU only"
        if self.bands is not None and value in self.bands:
            return self.bands[value][0]
        return value


FACETS = (
    Facet("tag", "Tag", "tags__name"),
    Facet("source", "Repository", "source_url", top=10),
    Facet("language", "Language", "language"),
    Facet("example_type", "Example type", "example_type"),
    Facet("gpu", "GPU", "gpu_required"),
    Facet("model", "Model"),  # the code model or the fast model
    Facet("score", "Expert score", bands=SCORE_BANDS),
    Facet("usage", "Repository exercised", bands=USAGE_BANDS),
    Facet("health", "Health", bands=HEALTH_BANDS),  # the last check's verdict (library/health.py)
)
# Filters the page applies and shows as chosen, but offers no values of (the API's).
OTHER_LABELS = {"requirement": "Needs package", "min_score": "Score at least"}
