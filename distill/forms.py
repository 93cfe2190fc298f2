"""Forms of the run pages. They check what a curator typed; starting runs is `services.run_submit`."""

import os

from django import forms
from django.conf import settings

from distill import services
from distill.pipeline import sources
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
    """Repositories to distill. `kind` leaves room for a paper section beside the repositories one."""

    kind = forms.ChoiceField(choices=[("repository", "Repositories")], initial="repository", required=False)
    urls = forms.CharField(
        required=False,
        widget=forms.Textarea(
            attrs={"rows": 6, "spellcheck": "false", "placeholder": "https://github.com/owner/name"}
        ),
        label="Repository URLs",
    )
    urls_file = forms.FileField(required=False, label="Or upload a .txt file of URLs")

    field_order = ["kind", "urls", "urls_file", "profile"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.refused: list[RefusedLine] = []

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
            running = services.in_progress_for(url)
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
