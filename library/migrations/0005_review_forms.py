"""The two scoring forms that ship with the site: CodeDistiller's manual analysis and PaperCoder's
author evaluation. Later edits happen in the admin; this migration only adds the forms that are missing.
"""

from django.db import migrations

PRESENCE = ["fully", "partly", "not implemented"]
FIX_TIME = ["no fix needed", "under 15 minutes", "under 1 hour", "under 1 day", "more than 1 day"]

FORMS = [
    {
        "name": "CodeDistiller manual analysis",
        "description": "The manual analysis of CodeDistiller's paper: does the example run, is it a faithful, "
        "accurate and complete demonstration of the repository's core purpose, and would it help a coding agent.",
        "guidelines": (
            "Read the repository's README first, then the example's code and its output.\n\n"
            "Runs: the program finishes without error and writes its results (the log shows this).\n"
            "Faithful: it demonstrates the repository's core purpose, not a side feature or a re-implementation "
            "that avoids the repository's code.\n"
            "Accurate: what it prints and saves is right for what it claims to do.\n"
            "Complete: nothing essential to the demonstration is stubbed, mocked or skipped.\n\n"
            "The automatic judge's verdicts are filled in as suggestions: keep them when you agree, change them "
            "when you do not. Changes are recorded; they are how the judge is measured."
        ),
        "questions": [
            (
                "runs",
                "Does it run?",
                "yes_no",
                True,
                [],
                "runs",
                "The program exits cleanly and writes its results.",
            ),
            (
                "faithful",
                "Is it faithful to the repository's core purpose?",
                "yes_no",
                True,
                [],
                "faithful",
                "It exercises the repository's own code for what the repository is for.",
            ),
            (
                "accurate",
                "Is it accurate?",
                "yes_no",
                True,
                [],
                "accurate",
                "Its outputs are correct for what it claims.",
            ),
            (
                "complete",
                "Is it complete?",
                "yes_no",
                True,
                [],
                "complete",
                "Nothing essential is stubbed or skipped.",
            ),
            (
                "helps_agent",
                "Would it help a coding agent use this repository?",
                "rating",
                True,
                [],
                "",
                "1: not at all · 3: somewhat, with fixes · 5: an agent could build on it as is.",
            ),
            (
                "fix_time",
                "If it is not right, how long would a fix take?",
                "single",
                True,
                FIX_TIME,
                "",
                "For someone who knows Python but not this repository.",
            ),
            ("notes", "Notes", "text", False, [], "", "Anything an author of the next version should know."),
        ],
    },
    {
        "name": "PaperCoder author evaluation",
        "description": "PaperCoder's evaluation by the papers' authors: for each section of the paper, "
        "whether each criterion is implemented, and whether the result is a better start than nothing.",
        "guidelines": (
            "List, for yourself, the key criteria of each section of the paper: how the data are processed, "
            "the method, and how it is evaluated. For each section, mark whether its criteria are fully, partly "
            "or not implemented in the code. Judge the code as written, even if it does not run yet."
        ),
        "questions": [
            (
                "data_processing",
                "Data processing: are its criteria implemented?",
                "single",
                True,
                PRESENCE,
                "",
                "Loading, cleaning and splitting the data as the paper describes.",
            ),
            (
                "method",
                "Method: are its criteria implemented?",
                "single",
                True,
                PRESENCE,
                "",
                "The model or algorithm the paper proposes, with its key details.",
            ),
            (
                "evaluation",
                "Evaluation: are its criteria implemented?",
                "single",
                True,
                PRESENCE,
                "",
                "The metrics, baselines and experiments of the paper.",
            ),
            (
                "overall",
                "Overall, how well does the code reproduce the paper?",
                "rating",
                True,
                [],
                "",
                "1: unrelated · 3: the right shape with important gaps · 5: a faithful implementation.",
            ),
            (
                "easier",
                "Is this easier than starting from scratch?",
                "yes_no",
                True,
                [],
                "",
                "Would you start a reproduction from this code rather than from nothing?",
            ),
            ("notes", "Notes", "text", False, [], "", "Criteria that are missing or wrong."),
        ],
    },
]


def add_forms(apps, schema_editor):
    ScoringForm = apps.get_model("library", "ScoringForm")
    Question = apps.get_model("library", "Question")
    for spec in FORMS:
        form, created = ScoringForm.objects.get_or_create(
            name=spec["name"], defaults={"description": spec["description"], "guidelines": spec["guidelines"]}
        )
        if not created:
            continue
        for order, (key, text, kind, required, choices, suggest, help_text) in enumerate(spec["questions"]):
            Question.objects.create(
                form=form, order=order, key=key, text=text, kind=kind, required=required, choices=choices,
                suggest_from=suggest, help_text=help_text,
            )  # fmt: skip


def remove_forms(apps, schema_editor):
    apps.get_model("library", "ScoringForm").objects.filter(
        name__in=[spec["name"] for spec in FORMS], queues=None
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("library", "0004_reviews")]

    operations = [migrations.RunPython(add_forms, remove_forms)]
