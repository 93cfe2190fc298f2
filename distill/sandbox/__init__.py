"""Run a generated program in isolation. `get_sandbox("local")` is the bubblewrap backend."""

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
]


def get_sandbox(name: str) -> Sandbox:
    if name == "local":
        from .local import LocalSandbox

        return LocalSandbox()
    if name == "modal":
        raise SandboxUnavailable("the modal sandbox backend is not implemented yet; use SANDBOX=local")
    raise SandboxUnavailable(f"unknown sandbox backend {name!r}; the choices are 'local' and 'modal'")
