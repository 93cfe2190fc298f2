"""Profiles: named JSON configurations that pick the models and limits of a run (CodeDistiller's config-*.json).

A profile is validated where it enters (a file here, a `--config FILE`, or overrides from a form); the run
keeps a snapshot of it in `Run.config`, so later edits of a profile do not rewrite history.
"""

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

PROFILE_DIR = Path(__file__).resolve().parent


class ProfileError(Exception):
    pass


class ModalSection(BaseModel):
    """Resources of a Modal sandbox (profiles with `"sandbox": "modal"`); the limits stay the profile's."""

    model_config = ConfigDict(extra="forbid")

    cpu: float = Field(default=2.0, gt=0, le=64)  # cores requested
    memory_mb: int | None = Field(default=None, ge=256)  # None: the profile's memory_mb
    python_version: str = Field(default="3.12", pattern=r"^3\.\d+$")
    apt_packages: list[str] = Field(default_factory=lambda: ["git", "wget", "curl"])
    app_name: str = Field(default="codedistiller", min_length=1)


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = ""
    model_code: str = Field(min_length=1)
    model_fast: str = Field(min_length=1)
    api_key_env: str = ""  # the variable that must be set for this profile's provider; "" for none
    max_debug_iterations: int = Field(default=8, ge=1, le=50)
    max_runtime_mins: float = Field(default=45, gt=0, le=24 * 60)
    max_cost_usd: float | None = Field(default=None, ge=0)  # None: no cap
    max_total_tokens: int | None = Field(default=None, ge=1)  # None: no cap
    sandbox: str = Field(default="local", pattern="^(local|modal)$")
    modal: ModalSection | None = None  # with "sandbox": "modal"; None: the defaults
    memory_mb: int = Field(default=4096, ge=256)
    max_procs: int = Field(default=256, ge=8)
    network_run: bool = False  # network while main.py runs (always on while dependencies install)
    # Disk: the job folder (what the program writes) and the run's environments (venvs, download cache).
    disk_mb: int = Field(default=4096, ge=64)
    env_disk_mb: int = Field(default=16384, ge=256)
    shm_mb: int = Field(default=256, ge=16)  # /dev/shm, in memory
    max_saved_files: int = Field(default=500, ge=1)  # files of to_save/ kept; the rest are left out
    max_saved_mb: int = Field(default=512, ge=1)
    # The environment step (distill/pipeline/environment.py): its install's time limit, and how many times
    # the code model may change the requirements when the deterministic install is not ready.
    environment_install_mins: float = Field(default=15, gt=0, le=120)
    max_environment_repairs: int = Field(default=2, ge=0, le=5)
    context_tokens: int = Field(default=128000, ge=2048)
    file_budget_tokens: int = Field(default=60000, ge=500)
    max_tokens_per_file: int = Field(default=12000, ge=100)
    rating_batch_size: int = Field(default=8, ge=1, le=50)
    # Files rated per run, most promising first (sources before tests, shallow before deep): each batch is
    # one call, which a CPU model takes a minute or more to answer.
    max_rated_files: int = Field(default=200, ge=1, le=2000)
    # None: rate unless it would change nothing (distill.pipeline.repository._rating_skip_reason); true or
    # false: always or never.
    rate_files: bool | None = None
    code_max_output_tokens: int = Field(default=16000, ge=256)
    max_reply_repairs: int = Field(default=2, ge=0, le=5)
    llm_timeout_secs: float = Field(default=300, gt=0, le=6 * 3600)  # one model call, reading and writing
    replay: str | None = None  # a cassette of recorded LLM replies (tests, offline demos)


def list_profiles() -> list[str]:
    return sorted(path.stem for path in PROFILE_DIR.glob("*.json"))


def load_profile(name: str, overrides: dict | None = None) -> Profile:
    path = PROFILE_DIR / f"{name}.json"
    if name not in list_profiles():
        raise ProfileError(f"unknown profile {name!r}; choose one of: {', '.join(list_profiles())}")
    return _parse(path, overrides)


def load_profile_file(path: str | Path, overrides: dict | None = None) -> Profile:
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"config file {path} does not exist")
    return _parse(path, overrides)


def _parse(path: Path, overrides: dict | None) -> Profile:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ProfileError(f"{path.name} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path.name} must hold a JSON object")
    data.update({key: value for key, value in (overrides or {}).items() if value is not None})
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ProfileError(f"{path.name}: {where}: {first['msg']}") from None


def default_profile_name() -> str:
    """The profile a submission gets when it names none: the first whose provider key is set."""
    explicit = os.environ.get("DISTILL_DEFAULT_PROFILE")
    if explicit:
        return explicit
    for name in ("claude-sonnet-4.5", "gpt-5"):
        key = load_profile(name).api_key_env
        if key and os.environ.get(key):
            return name
    return "local"
