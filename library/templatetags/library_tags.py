from django import template

register = template.Library()


@register.simple_tag
def run_library(run) -> dict:
    """The examples made from a run and its rejections, for the run page: two queries, however many."""
    return {
        "examples": list(run.examples.only("pk", "title", "version", "iteration_number", "status", "run_id")),
        "rejections": list(run.rejections.select_related("rejected_by")),
    }
