"""Forms of the run pages. They check what a curator typed; starting runs is `services.run_submit`."""

import os

from django import forms
from django.conf import settings

from distill.models import Run
from distill.pipeline import papers, sources
from distill.profiles import Profile, ProfileError, list_profiles, load_profile

MAX_SOURCES = 100
MAX_UPLOAD_BYTES = 256 * 1024


def profile_choices() -> list[tuple[str, str]]:
    choices = []
    for name in list_profiles():
        try:
            profile = load_profile(name)
        except ProfileError:
            continue
        label = f"{name}: {profile.model_code}" + (
            f" + {profile.model_fast}" if profile.model_fast != profile.model_code else ""
        )
        if missing_key(profile):
            label += f" ({profile.api_key_env} is not set)"
        choices.append((name, label))
    return choices


def missing_key(profile: Profile) -> bool:
    """The profile's provider needs a key this server does not have (replayed replies need none)."""
    if not profile.api_key_env or settings.DISTILL_LLM_REPLAY or profile.replay:
        return False
    return not os.environ.get(profile.api_key_env)


class RefusedLine:
    def __init__(self, number: int, text: str, reason: str, run=None):
        self.number, self.text, self.reason, self.run = number, text, reason, run


class ProfileFields(forms.Form):
    """A profile and its optional overrides: the submit form, and "run again" on a run's page."""

    profile = forms.ChoiceField()
    max_debug_iterations = forms.IntegerField(
        required=False, min_value=1, max_value=50, label="Iterations at most"
    )
    max_runtime_mins = forms.FloatField(
        required=False, min_value=0.1, max_value=24 * 60, label="Runtime limit per program (minutes)"
    )
    max_cost_usd = forms.DecimalField(
        required=False, min_value=0, max_digits=8, decimal_places=2, label="Cost cap per run (USD)"
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["profile"].choices = profile_choices()

    def clean(self):
        data = super().clean()
        name = data.get("profile")
        if not name:
            return data
        overrides = {key: data.get(key) for key in ("max_debug_iterations", "max_runtime_mins")}
        if data.get("max_cost_usd") is not None:
            overrides["max_cost_usd"] = float(data["max_cost_usd"])
        try:
            data["profile_obj"] = load_profile(name, overrides)
        except ProfileError as exc:
            raise forms.ValidationError(str(exc)) from None
        if missing_key(data["profile_obj"]):
            self.add_error(
                "profile",
                f"The {name} profile needs {data['profile_obj'].api_key_env}, which is not set on this server. "
                "Choose another profile, or ask an administrator to set it.",
            )
        return data


class SubmitForm(ProfileFields):
    """Repositories to distill, or one paper (`kind` says which section was used)."""

    kind = forms.ChoiceField(
        choices=[("repository", "Repositories"), ("paper", "Paper")], initial="repository", required=False
    )
    urls = forms.CharField(
        required=False,
        widget=forms.Textarea(
            attrs={"rows": 6, "spellcheck": "false", "placeholder": "https://github.com/owner/name"}
        ),
        label="Repository URLs",
    )
    urls_file = forms.FileField(required=False, label="Or upload a .txt file of URLs")

    paper_file = forms.FileField(required=False, label="Upload the paper (PDF, Markdown or text)")
    paper_text = forms.CharField(
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 8, "spellcheck": "false"}),
        label="Or paste it (Markdown or plain text)",
    )
    paper_arxiv = forms.CharField(required=False, max_length=200, label="Or an arXiv link")
    paper_title = forms.CharField(required=False, max_length=500, label="Title")
    paper_authors = forms.CharField(required=False, max_length=1000, label="Authors")
    paper_link = forms.URLField(required=False, max_length=2000, assume_scheme="https", label="Link")

    field_order = ["kind", "urls", "urls_file", "profile"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.refused: list[RefusedLine] = []
        limits = papers.Limits.from_settings()
        self.paper_limits = {"max_mb": limits.max_bytes // (1024 * 1024), "max_pages": limits.max_pages}

    def clean_urls_file(self):
        upload = self.cleaned_data.get("urls_file")
        if not upload:
            return ""
        if not upload.name.lower().endswith(".txt"):
            raise forms.ValidationError("Upload a .txt file: one URL a line.")
        if upload.size > MAX_UPLOAD_BYTES:
            raise forms.ValidationError(f"The file is larger than {MAX_UPLOAD_BYTES // 1024} KB.")
        try:
            return upload.read().decode("utf-8-sig")
        except UnicodeDecodeError:
            raise forms.ValidationError("The file is not UTF-8 text.") from None

    def clean(self):
        data = super().clean()
        if data.get("kind") == "paper":
            self._clean_paper(data)
            return data
        lines = [
            line.strip()
            for line in (data.get("urls", "") + "\n" + (data.get("urls_file") or "")).splitlines()
            if line.strip() and not line.strip().startswith("#")
        ]
        if not lines and not self.has_error("urls_file"):
            self.add_error("urls", "Give at least one repository URL.")
            return data
        if len(lines) > MAX_SOURCES:
            self.add_error("urls", f"{len(lines)} lines: submit at most {MAX_SOURCES} repositories at once.")
            return data
        # Every line is checked, and nothing starts while any is refused: the curator fixes the list and
        # submits it again, instead of having to work out which half of a batch is already running.
        self.refused, accepted, seen = [], [], {}
        for number, line in enumerate(lines, start=1):
            try:
                url = sources.check_source(
                    line,
                    allowed_hosts=settings.DISTILL_ALLOWED_HOSTS,
                    allow_local=settings.DISTILL_ALLOW_LOCAL_SOURCES,
                )
            except sources.SourceRefused as exc:
                self.refused.append(RefusedLine(number, line, str(exc)))
                continue
            if url in seen:
                self.refused.append(RefusedLine(number, line, f"the same repository as line {seen[url]}"))
                continue
            seen[url] = number
            running = Run.objects.in_progress_for(url)
            if running:
                self.refused.append(RefusedLine(number, line, "already has a run in progress", run=running))
                continue
            accepted.append(url)
        if self.refused:
            self.add_error(
                "urls",
                f"{len(self.refused)} of {len(lines)} lines cannot be started; nothing was started. "
                "Fix or remove them and submit again.",
            )
        data["sources"] = accepted
        return data

    def _clean_paper(self, data) -> None:
        """Reads the paper now, so that an unreadable one is refused here and no run is made."""
        upload, text, arxiv = (
            data.get("paper_file"),
            data.get("paper_text") or "",
            data.get("paper_arxiv") or "",
        )
        given = [name for name, value in (("paper_file", upload), ("paper_text", text.strip()), ("paper_arxiv", arxiv))
                 if value]  # fmt: skip
        if not given:
            self.add_error("paper_file", "Upload the paper, paste its text, or give its arXiv link.")
            return
        if len(given) > 1:
            self.add_error(
                given[1], "Give the paper one way only: an upload, a pasted text or an arXiv link."
            )
            return
        limits = papers.Limits.from_settings()
        try:
            if upload:
                if upload.size > limits.max_bytes:
                    raise papers.PaperRefused(
                        f"the file is larger than {limits.max_bytes // (1024 * 1024)} MB"
                    )
                paper = papers.from_file(
                    upload.read(limits.max_bytes + 1), filename=upload.name or "paper", limits=limits
                )
            elif arxiv:
                paper = papers.from_arxiv(arxiv, limits=limits)
            else:
                reader = papers.from_markdown if papers.looks_like_markdown(text) else papers.from_text
                paper = reader(text, limits=limits)
        except papers.PaperRefused as exc:
            self.add_error(given[0], f"This paper cannot be used: {exc}.")
            return
        paper.title = data.get("paper_title", "").strip() or paper.title
        paper.authors = data.get("paper_authors", "").strip() or paper.authors
        paper.url = data.get("paper_link") or paper.url
        if not paper.title:
            self.add_error("paper_title", "No title was found in the paper: give it here.")
            return
        data["paper"] = paper
