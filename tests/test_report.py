"""The run's output folder: report.html's tables."""

import re

from django.utils import timezone

from distill.models import LLMCall, RunStep
from distill.pipeline import report
from tests.factories import make_iteration, make_run


def test_the_reports_stage_table_is_in_pipeline_order_not_alphabetical(db):
    run = make_run()
    make_iteration(run, 1)
    for stage in ("purpose", "rate", "generate", "judge"):
        LLMCall.objects.create(run=run, stage=stage, model="m", status="ok")
    for name in ("fetch", "survey", "execute"):
        RunStep.objects.create(run=run, name=name, iteration=1, outcome="done", finished_at=timezone.now())

    html = report.write_outputs(run).joinpath("report.html").read_text()

    table = html[html.index("Cost and time per stage") :]
    stages = re.findall(r"<tr><td>([a-z ]+)</td>", table)
    assert stages == ["purpose", "fetch", "survey", "rate", "generate", "execute", "judge"]
