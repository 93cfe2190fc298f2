"""Forms of the review pages. The scoring form is built from the scoring form's questions (data)."""

from django import forms
from django.contrib.auth import get_user_model
from django.db.models import Q

from codedistiller_site.roles import EXPERT
from library.models import Example
from reviews.models import Question, ScoringForm
from reviews.services import RATINGS, ReviewRefused, answer_check, suggestion

YES_NO = [("yes", "Yes"), ("no", "No")]
ONE_ANSWER = (Question.Kind.RATING, Question.Kind.YES_NO, Question.Kind.SINGLE)


def field_name(question: Question) -> str:
    return f"q_{question.key}"


class ScoreForm(forms.Form):
    """One field per question, in the form's order; `values()` gives key -> answer for answer_submit."""

    def __init__(
        self, *args, questions: list[Question], example: Example, draft: dict | None = None, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.questions = questions
        self.suggestions = {}
        draft = draft or {}
        for question in questions:
            suggested = suggestion(question, example)
            self.suggestions[question.key] = suggested
            field = self._field(question)
            if suggested is not None:
                field.initial = "yes" if suggested else "no"
            name = field_name(question)
            if name in draft:  # what the expert chose wins over the judge's suggestion
                kept = [str(value) for value in draft[name]]
                field.initial = kept if question.kind == Question.Kind.MULTIPLE else (kept[0] if kept else "")
            self.fields[name] = field

    @staticmethod
    def _field(question: Question) -> forms.Field:
        common = {"label": question.text, "help_text": question.help_text, "required": question.required}
        kind = Question.Kind
        if question.kind == kind.RATING:
            return forms.TypedChoiceField(
                choices=[(r, str(r)) for r in RATINGS], coerce=int, widget=forms.RadioSelect,
                error_messages={"invalid_choice": "Rate from 1 to 5."}, **common,
            )  # fmt: skip
        if question.kind == kind.YES_NO:
            return forms.ChoiceField(
                choices=YES_NO, widget=forms.RadioSelect,
                error_messages={"invalid_choice": "Answer yes or no."}, **common,
            )  # fmt: skip
        choices = [(c, c) for c in question.choices]
        unknown = {"invalid_choice": "%(value)s is not one of the choices."}
        if question.kind == kind.SINGLE:
            return forms.ChoiceField(
                choices=choices, widget=forms.RadioSelect, error_messages=unknown, **common
            )
        if question.kind == kind.MULTIPLE:
            return forms.MultipleChoiceField(
                choices=choices, widget=forms.CheckboxSelectMultiple, error_messages=unknown, **common
            )
        return forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=5000, **common)

    def clean(self):
        cleaned = super().clean()
        for question in self.questions:
            name = field_name(question)
            # A radio posts one value; two values for a one-answer question are refused, not truncated.
            if (
                question.kind in ONE_ANSWER
                and hasattr(self.data, "getlist")
                and len(self.data.getlist(name)) > 1
            ):
                self.add_error(name, "Pick one answer only.")
                continue
            if name in cleaned:
                try:
                    answer_check(question, self._value(question, cleaned[name]))
                except ReviewRefused as exc:
                    self.add_error(name, str(exc))
        return cleaned

    @staticmethod
    def _value(question: Question, raw):
        if raw in ("", None, []):
            return None
        if question.kind == Question.Kind.YES_NO:
            return raw == "yes"
        return raw

    def values(self) -> dict:
        return {q.key: self._value(q, self.cleaned_data.get(field_name(q))) for q in self.questions}

    def rows(self):
        """(question, bound field, suggestion label) for the template, in order."""
        for question in self.questions:
            suggested = self.suggestions[question.key]
            label = None if suggested is None else ("yes" if suggested else "no")
            yield question, self[field_name(question)], label


class QueueForm(forms.Form):
    """The queue's own fields and the examples ticked; the filter the examples are listed with, and its
    "all that match", are read by the view from the same post."""

    name = forms.CharField(max_length=200)
    form = forms.ModelChoiceField(queryset=ScoringForm.objects.all(), label="Scoring form", empty_label=None)
    scores_needed = forms.IntegerField(min_value=1, max_value=20, initial=2, label="Scores per example")
    experts = forms.ModelMultipleChoiceField(
        queryset=get_user_model().objects.none(), widget=forms.CheckboxSelectMultiple
    )
    examples = forms.ModelMultipleChoiceField(queryset=Example.objects.none(), required=False)
    all_matching = forms.BooleanField(required=False)

    MULTIPLE = ("experts", "examples")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # A superuser holds every role (codedistiller_site/roles.py), so may score too.
        experts = (
            get_user_model()
            .objects.filter(Q(groups__name=EXPERT) | Q(is_superuser=True), is_active=True)
            .order_by("username")
            .distinct()
        )
        self.fields["experts"].queryset = experts
        # The default must be possible: two scores per example where there are two experts to give them.
        self.fields["scores_needed"].initial = max(1, min(2, experts.count()))
        self.fields["experts"].label_from_instance = lambda user: user.get_username()
        self.fields["examples"].queryset = Example.objects.listed().only("pk")

    @classmethod
    def initial_from(cls, params) -> dict:
        """What was typed and ticked in `params` (a post that filtered or turned a page), as initial data."""
        initial = {}
        for name in cls.base_fields:
            if name in cls.MULTIPLE:
                initial[name] = params.getlist(name)
            elif name in params:
                initial[name] = params.get(name)
        initial["all_matching"] = params.get("all_matching") == "on"
        return initial

    def clean(self):
        cleaned = super().clean()
        if not cleaned.get("examples") and not cleaned.get("all_matching"):
            raise forms.ValidationError("Tick examples, or take all the examples that match the filter.")
        return cleaned


class ComparisonForm(forms.Form):
    left = forms.IntegerField(widget=forms.HiddenInput)
    right = forms.IntegerField(widget=forms.HiddenInput)
    picked = forms.ChoiceField(
        choices=[("left", "Left is better"), ("right", "Right is better"), ("tie", "A tie")],
        widget=forms.RadioSelect, label="Which example is better?",
    )  # fmt: skip
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=5000, label="Why?")
