"""Run a generated program in isolation: `get_sandbox("local")` is bubblewrap, `get_sandbox("modal")` Modal."""

from pathlib import Path

from .base import (
    ExecutionRequest,
    ExecutionResult,
    Limits,
    Sandbox,
    SandboxUnavailable,
)

__all__ = [
    "ExecutionRequest",
    "ExecutionResult",
    "Limits",
    "Sandbox",
    "SandboxUnavailable",
    "get_sandbox",
    "kill_leftovers",
]


def get_sandbox(name: str, options: dict | None = None) -> Sandbox:
    """The backend called name; options are a profile's `modal` section for "modal".

    Instant in every case: "modal" is refused without MODAL_TOKEN_ID and MODAL_TOKEN_SECRET before the
    Modal client is imported (it would otherwise retry for about a minute before it gives up).
    """
    if name == "local":
        from .local import LocalSandbox

        return LocalSandbox()
    if name == "modal":
        from .modal import ModalOptions, ModalSandbox

        return ModalSandbox(ModalOptions(**(options or {})))
    raise SandboxUnavailable(f"unknown sandbox backend {name!r}; the choices are 'local' and 'modal'")


def kill_leftovers(env_dir: Path) -> int:
    """Kills what a local sandbox of this run's environment folder left running on this machine when its
    worker was killed; how many processes there were. (A Modal sandbox ends at its own timeout.)"""
    from .local import kill_leftovers_unless_busy

    # Another run of the same commit may be executing in the folder now: its processes are no leftovers.
    return kill_leftovers_unless_busy(env_dir)
