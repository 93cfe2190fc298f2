from django import forms

from distill.models import Iteration, Run


class ApproveForm(forms.Form):
    iteration = forms.TypedChoiceField(coerce=int, widget=forms.RadioSelect)
    title = forms.CharField(max_length=300)
    summary = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}))
    tags = forms.CharField(
        required=False,
        max_length=1000,
        help_text="Comma-separated, e.g. “phonons, density functional theory”.",
    )
    override_reason = forms.CharField(
        required=False,
        label="Why approve an iteration that did not pass",
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="Needed only when the chosen iteration failed a verdict; shown on the example's page.",
    )

    def __init__(self, *args, run: Run, iterations: list[Iteration], **kwargs):
        super().__init__(*args, **kwargs)
        self.run = run
        self.iterations = {iteration.number: iteration for iteration in iterations}
        self.fields["iteration"].choices = [(number, f"Iteration {number}") for number in self.iterations]

    def clean_tags(self) -> list[str]:
        return [name.strip() for name in self.cleaned_data["tags"].split(",") if name.strip()]

    def clean_iteration(self) -> Iteration:
        return self.iterations[self.cleaned_data["iteration"]]


class ReasonForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), max_length=5000)
