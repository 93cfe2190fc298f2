"""The library's pages: browse and search, one example, and the curator's approve, reject and retract."""

import mimetypes

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.views import redirect_to_login
from django.core.paginator import Paginator
from django.db.models import Q
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_POST

from codedistiller_site.roles import CURATOR, curator_required, has_role
from codedistiller_site.saved_files import INLINE_IMAGE_TYPES, saved_file_response
from distill.diffing import diff_files
from distill.forms import ProfileFields
from distill.highlight import code_files, flat_items, key_value_items, pretty_json
from distill.models import Iteration, Run
from library import health, search, semantic, services
from library.api import download_view
from library.filters import FACETS, OTHER_LABELS, SORTS, LibraryFilters
from library.forms import ApproveForm, ReasonForm
from library.models import Example

PAGE_SIZE = 20


def _may_read(request) -> bool:
    return settings.LIBRARY_PUBLIC or request.user.is_authenticated


# Browse and search ------------------------------------------------------------------------------------


def library_index(request):
    if not _may_read(request):
        return redirect_to_login(request.get_full_path())
    filters = LibraryFilters.parse(request.GET)
    listed = Example.objects.listed()
    found, ranked = filters.search(listed)
    results = filters.ordered(filters.narrow(found), ranked)
    rows = results.prefetch_related("tags").defer("files", "stdout", "embedding")
    page = Paginator(rows, PAGE_SIZE).get_page(request.GET.get("page"))
    snippets = search.snippets(filters.q, [row.pk for row in page]) if filters.q else {}
    for row in page:
        row.snippet = snippets.get(row.pk)
    params = filters.as_params()
    context = {
        "q": filters.q,
        "sort": filters.order,
        "sort_links": [
            (key, label, _link(params, sort=key))
            for key, label in SORTS.items()
            if key != "relevance" or filters.q
        ],
        "page": page,
        "rows": list(page),
        "facets": _facet_panels(filters, found),
        "chosen": _chosen(filters),
        "filter_errors": [message for _param, message in filters.errors],
        "total": listed.count(),
        # The search bar keeps the filters; a new search starts from its own default order.
        "keep": [
            (key, v) for key, value in params.items() if key not in ("q", "sort") for v in _values(value)
        ],
        # The export and the review queue take the page's own parameters: they hold what it lists, in its order.
        "filter_query": urlencode(params, doseq=True),
        "previous_link": _link(params, page=page.previous_page_number()) if page.has_previous() else "",
        "next_link": _link(params, page=page.next_page_number()) if page.has_next() else "",
    }
    return render(request, "library/index.html", context)


def _facet_panels(filters: LibraryFilters, found) -> list[dict]:
    params = filters.as_params()
    panels = []
    for facet in FACETS:
        chosen = facet.chosen(filters)
        # Counted with the other facets applied but not this one, so that each value says what choosing it
        # gives; choosing a current value again takes it away.
        counted = facet.counts(filters.without(facet.param).narrow(found))
        values = [
            {
                "label": label,
                "count": count,
                "current": value in chosen,
                "link": _link(
                    params, **{facet.param: [v for v in chosen if v != value] if value in chosen else value}
                ),
            }
            for value, label, count in counted
        ]
        if values:
            panels.append({"param": facet.param, "label": facet.label, "values": values})
    return panels


def _chosen(filters: LibraryFilters) -> list[tuple[str, str, str]]:
    """(label, value, link without it) for each filter that is set, the search and the order aside."""
    params = filters.as_params()
    chips = []
    for facet in FACETS:
        chosen = facet.chosen(filters)
        for value in chosen:
            others = [v for v in chosen if v != value]
            chips.append((facet.label, facet.label_of(value), _link(params, **{facet.param: others})))
    for param, label in OTHER_LABELS.items():
        if param in params:
            chips.append((label, str(params[param]), _link(params, **{param: ""})))
    return chips


def _values(value) -> list:
    return value if isinstance(value, list) else [value]


def _link(params: dict, **changes) -> str:
    """The library page with `params` changed by `changes` (an empty value takes the parameter away)."""
    merged = {**params, **changes}
    query = urlencode(
        {key: value for key, value in merged.items() if value not in ("", None, [])}, doseq=True
    )
    return f"{reverse('library')}?{query}" if query else reverse("library")


# One example ------------------------------------------------------------------------------------------


def example_detail(request, example_id: int):
    if not _may_read(request):
        return redirect_to_login(request.get_full_path())
    example = get_object_or_404(Example.objects.select_related("approved_by", "retracted_by"), pk=example_id)
    versions = list(
        Example.objects.versions_of(example.source_url).only(
            "pk", "version", "status", "approved_at", "title", "is_latest"
        )
    )
    newer = [v for v in versions if v.version > example.version and v.status == Example.Status.APPROVED]
    example_health = health.health_of(example)
    context = {
        "example": example,
        "tags": list(example.tags.all()),
        "files": code_files(example.files),
        "results_json": pretty_json(example.results) if example.results is not None else None,
        "results_table": flat_items(example.results),
        "metadata": key_value_items(example.metadata),
        "saved_files": _saved_files(example),
        "versions": versions,
        "newest": newer[0] if newer else None,
        "may_see_runs": request.user.is_authenticated,
        # Approving embeds it in a worker: until then semantic search does not find it.
        "indexing": not example.embedding and not example.is_retracted and semantic.available(),
        "retract_form": ReasonForm(auto_id="retract_%s") if has_role(request.user, CURATOR) else None,
        "health": example_health,
        "repair_form": ProfileFields(initial={"profile": example.profile}, auto_id="repair_%s")
        if has_role(request.user, CURATOR) and example_health.status in health.FAILED
        else None,
    }
    return render(request, "library/example_detail.html", context)


def _saved_files(example: Example) -> list[dict]:
    saved = []
    for entry in example.saved_files or []:
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            content_type = mimetypes.guess_type(entry["name"])[0]
            saved.append(
                {
                    "name": entry["name"],
                    "size": entry.get("size"),
                    "image": content_type in INLINE_IMAGE_TYPES,
                    "url": reverse("example_file", args=[example.pk, entry["name"]]),
                }
            )
    return saved


@download_view
def example_file(request, example_id: int, path: str):
    """A saved file (a plot, a table): the API links to it, so an agent's token opens it too."""
    example = get_object_or_404(Example, pk=example_id)
    return saved_file_response(example.files_dir / "to_save", example.saved_files, path)


# Curators' actions ------------------------------------------------------------------------------------


@curator_required
def run_approve(request, run_id: int):
    run = get_object_or_404(Run, pk=run_id)
    # Only a program that ran can be approved (the service says so too).
    ran = Q(exit_code__isnull=False) | Q(state=Iteration.State.JUDGED)
    iterations = list(
        run.iterations.filter(ran).defer("stdout", "stderr", "install_log", "log").order_by("number")
    )
    default = run.iterations.offered()
    initial = {
        "iteration": default.number if default else None,
        "title": run.source_title or run.source_url,
        "summary": str((default.metadata or {}).get("description", "")) if default else "",
    }
    form = ApproveForm(request.POST or None, run=run, iterations=iterations, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            example = services.example_approve(
                run=run,
                approved_by=request.user,
                iteration=data["iteration"],
                title=data["title"],
                summary=data["summary"],
                tags=data["tags"],
                override_reason=data["override_reason"],
            )
        except services.LibraryRefused as exc:
            form.add_error(None, str(exc))
        else:
            messages.success(request, f"“{example.title}” is in the library as version {example.version}.")
            return redirect("example_detail", example.pk)
    repaired = health.repaired_example(run)
    context = {
        "run": run,
        "form": form,
        "iterations": iterations,
        "default": default,
        "versions": list(
            Example.objects.versions_of(run.source_url).only("pk", "version", "status", "title")
        ),
        # A repair run's result is offered as the next version of the example it repairs: shown against it.
        "repaired": repaired,
        "repair_diff": diff_files(repaired.files, default.files) if repaired and default else None,
    }
    return render(request, "library/approve.html", context)


@require_POST
@curator_required
def run_reject(request, run_id: int):
    run = get_object_or_404(Run, pk=run_id)
    form = ReasonForm(request.POST)
    try:
        if not form.is_valid():
            raise services.LibraryRefused("Say why the run is rejected: the reason is kept with it.")
        services.run_reject(run=run, rejected_by=request.user, reason=form.cleaned_data["reason"])
    except services.LibraryRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Run {run.pk} is rejected; the reason is kept on its page.")
    return redirect(reverse("run_detail", args=[run.pk]) + "#library-h")


@require_POST
@curator_required
def example_retract(request, example_id: int):
    example = get_object_or_404(Example, pk=example_id)
    form = ReasonForm(request.POST)
    try:
        if not form.is_valid():
            raise services.LibraryRefused("Say why the example is retracted: its page shows the reason.")
        services.example_retract(
            example=example, retracted_by=request.user, reason=form.cleaned_data["reason"]
        )
    except services.LibraryRefused as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, "The example is retracted: it has left search and the API.")
    return redirect("example_detail", example.pk)
