"""The review pages (/reviews/): queues for curators, scoring and blind A/B for experts."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from codedistiller_site.ids import parse_id
from codedistiller_site.roles import CURATOR, EXPERT, curator_required, expert_required, has_role
from distill.highlight import code_files, pretty_json
from library.filters import FACETS, OTHER_LABELS, LibraryFilters
from library.models import Example
from reviews import services
from reviews.forms import ComparisonForm, QueueForm, ScoreForm
from reviews.models import Review, ReviewItem, ReviewQueue, ScoreDraft


@login_required
def review_index(request):
    context = {"queues": [], "my_queues": []}
    if has_role(request.user, CURATOR):
        context["queues"] = ReviewQueue.objects.select_related("form").prefetch_related("experts")
        for queue in context["queues"]:
            queue.progress = _progress(queue)
    if has_role(request.user, EXPERT):
        for queue in ReviewQueue.objects.filter(experts=request.user).select_related("form"):
            queue.mine = Review.objects.filter(item__queue=queue, expert=request.user).count()
            queue.open = services.open_items(queue, request.user).exists()
            context["my_queues"].append(queue)
    return render(request, "reviews/index.html", context)


def _progress(queue: ReviewQueue) -> dict:
    items = list(queue.items.with_counts().values_list("scored", flat=True))
    done = sum(1 for scored in items if scored >= queue.scores_needed)
    return {"done": done, "total": len(items), "percent": round(100 * done / len(items)) if items else 0}


PICK_PAGE_SIZE = 50


@curator_required
def queue_new(request):
    # One form holds the queue's fields, the filter, the page of examples shown and every tick, and its
    # Filter and page buttons post it: filtering or turning a page keeps all that was typed and ticked,
    # with or without JavaScript. A GET takes the filter from the address (as on /library/).
    params = request.POST if request.method == "POST" else request.GET
    creating = "create" in request.POST
    form = QueueForm(request.POST if creating else None, initial=QueueForm.initial_from(params))
    filters = LibraryFilters.parse(params)
    # In the library page's order: the queue offers its items in the order they were added.
    matching = Example.objects.listed().matching(filters)
    if creating and form.is_valid():
        data = form.cleaned_data
        examples = list(data["examples"]) + (list(matching.only("pk")) if data["all_matching"] else [])
        try:
            queue = services.queue_create(
                name=data["name"], form=data["form"], examples=examples, experts=data["experts"],
                created_by=request.user, scores_needed=data["scores_needed"],
                saved_search=filters.as_params() if data["all_matching"] else {},
            )  # fmt: skip
        except services.ReviewRefused as exc:
            form.add_error(exc.field, str(exc))
        else:
            messages.success(request, f"Queue “{queue.name}” is ready: {queue.items.count()} examples.")
            return redirect("review_queue", queue.pk)
    context = {"form": form, "filters": filters, **_example_picker(params, matching, filters)}
    return render(request, "reviews/queue_new.html", context)


def _example_picker(params, matching, filters: LibraryFilters) -> dict:
    """The page of matching examples to tick, the ticks kept from other pages, and the filter's choices."""
    number = params.get("page") or ("1" if "filter" in params else params.get("at_page"))
    page = Paginator(matching.defer("files", "stdout", "embedding"), PICK_PAGE_SIZE).get_page(number)
    picked = {pk for pk in map(parse_id, params.getlist("examples")) if pk is not None}
    listed = Example.objects.listed()
    choices = []
    for facet in FACETS:
        options = [(value, f"{label} ({count})") for value, label, count in facet.counts(listed)]
        # One value per facet here: a library link's further tags go on as hidden fields (kept_filters).
        chosen = next(iter(facet.chosen(filters)), "")
        if chosen and chosen not in {value for value, _label in options}:
            options.append((chosen, facet.label_of(chosen)))
        if options:
            choices.append({"param": facet.param, "label": facet.label, "options": options, "chosen": chosen})
    asked = filters.as_params()
    return {
        "filter_params": asked,
        "filter_errors": [message for _param, message in filters.errors],
        # What the picker has no field for (the order, a package, a least score, more tags) goes on with each post.
        "kept_filters": [("tag", tag) for tag in filters.tags[1:]]
        + [(key, asked[key]) for key in ("sort", *OTHER_LABELS) if key in asked],
        "page": page,
        "picked": picked,
        "picked_elsewhere": sorted(picked - {example.pk for example in page}),
        "facet_choices": choices,
        "library_size": listed.count(),
    }


@curator_required
def queue_detail(request, queue_id: int):
    queue = get_object_or_404(ReviewQueue.objects.select_related("form"), pk=queue_id)
    context = {"queue": queue, "results": services.queue_results(queue), "experts": queue.experts.all()}
    return render(request, "reviews/queue_detail.html", context)


@curator_required
def queue_csv(request, queue_id: int):
    queue = get_object_or_404(ReviewQueue, pk=queue_id)
    response = HttpResponse(services.answers_csv(queue), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="queue-{queue.pk}-answers.csv"'
    return response


@require_POST
@expert_required
def queue_next(request, queue_id: int):
    queue = get_object_or_404(ReviewQueue, pk=queue_id)
    try:
        item = services.item_next(queue=queue, expert=request.user)
    except services.ReviewRefused as exc:
        messages.error(request, str(exc))
        return redirect("reviews")
    if item is None:
        messages.info(request, f"Nothing left for you in “{queue.name}”: thank you.")
        return redirect("reviews")
    return redirect("review_item", item.pk)


@expert_required
def item_score(request, item_id: int):
    item = get_object_or_404(ReviewItem.objects.select_related("queue__form", "example"), pk=item_id)
    refusal = services.item_may_score(item=item, expert=request.user)
    # Answers posted for an example that filled up while they were typed are shown again below, not
    # dropped with a redirect: the expert may want to keep their notes.
    if refusal and not (request.method == "POST" and refusal == services.ALL_SCORED):
        messages.error(request, refusal)
        return redirect("reviews")
    questions = list(item.queue.form.questions.all())
    draft = ScoreDraft.objects.filter(item=item, expert=request.user).first()
    form = ScoreForm(
        request.POST or None, questions=questions, example=item.example, draft=draft.data if draft else None
    )
    if request.method == "POST" and form.is_valid():
        try:
            services.answer_submit(item=item, expert=request.user, values=form.values())
        except services.ReviewRefused as exc:
            form.add_error(None, f"{exc} Your answers were not saved; they are still below.")
        else:
            messages.success(request, f"Scored “{item.example.title}”.")
            following = services.item_next(queue=item.queue, expert=request.user)
            return redirect("review_item", following.pk) if following else redirect("reviews")
    hold = services.item_hold(item=item, expert=request.user)
    if request.method == "GET" and not hold.held:
        messages.error(request, "Another expert is scoring this example; take the next one.")
        return redirect("reviews")
    context = {
        "item": item,
        "example": item.example,
        "form": form,
        "hold": hold,
        "draft": draft,
        **_example_context(item.example),
    }
    return render(request, "reviews/item_score.html", context)


@require_POST
@expert_required
def item_draft(request, item_id: int):
    """Keeps the answers typed so far (the scoring page posts them as the expert types); says when."""
    item = get_object_or_404(ReviewItem.objects.select_related("queue"), pk=item_id)
    data = {name: request.POST.getlist(name) for name in request.POST if name.startswith("q_")}
    try:
        draft = services.draft_save(item=item, expert=request.user, data=data)
    except services.ReviewRefused as exc:
        return render(request, "reviews/item_score.html#draft", {"refusal": str(exc)})
    return render(request, "reviews/item_score.html#draft", {"draft": draft})


@require_POST
@expert_required
def item_hold(request, item_id: int):
    """The scoring page's heartbeat while the expert is active: renews their lock, returns its status."""
    item = get_object_or_404(ReviewItem.objects.select_related("queue"), pk=item_id)
    if not request.htmx:
        return redirect("review_item", item.pk)
    hold = services.item_hold(item=item, expert=request.user)
    return render(request, "reviews/item_score.html#hold", {"item": item, "hold": hold})


def _example_context(example: Example) -> dict:
    return {
        "files": code_files(example.files or {}),
        "results_lines": pretty_json(example.results) if example.results is not None else [],
    }


@require_POST
@expert_required
def item_skip(request, item_id: int):
    item = get_object_or_404(ReviewItem.objects.select_related("queue"), pk=item_id)
    try:
        services.item_skip(item=item, expert=request.user)
    except services.ReviewRefused as exc:
        messages.error(request, str(exc))
        return redirect("reviews")
    messages.info(request, "Skipped: it will not be offered to you again.")
    following = services.item_next(queue=item.queue, expert=request.user)
    return redirect("review_item", following.pk) if following else redirect("reviews")


@expert_required
def ab_compare(request):
    form = ComparisonForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        pair = Example.objects.in_bulk([data["left"], data["right"]])
        try:
            if len(pair) != 2:
                raise services.ReviewRefused("One of these examples no longer exists.")
            services.ab_submit(
                expert=request.user, left=pair[data["left"]], right=pair[data["right"]],
                picked=data["picked"], reason=data["reason"],
            )  # fmt: skip
        except services.ReviewRefused as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, "Comparison recorded.")
        return redirect("review_ab")
    if request.method == "POST":
        ids = [form.cleaned_data.get("left"), form.cleaned_data.get("right")]
        found = Example.objects.in_bulk([pk for pk in ids if pk])
        if len(found) != 2:
            return redirect("review_ab")
        left, right = found[ids[0]], found[ids[1]]
    else:
        pair = services.ab_next(expert=request.user)
        if pair is None:
            return render(request, "reviews/ab.html", {"pair": None})
        left, right = pair
        form = ComparisonForm(initial={"left": left.pk, "right": right.pk})
    sides = [
        (label, example, code_files(example.files or {}))
        for label, example in [("Left", left), ("Right", right)]
    ]
    return render(request, "reviews/ab.html", {"pair": True, "sides": sides, "form": form})


@curator_required
def ab_results(request):
    return render(request, "reviews/ab_results.html", {"rows": services.ab_results()})
