"""System checks: a missing system package is one clear line that says what to install."""

import shutil

from django.core import checks


@checks.register(checks.Tags.compatibility, deploy=False)
def check_sandbox_tools(app_configs, **kwargs):
    if shutil.which("bwrap") is None:
        return [
            checks.Warning(
                "bubblewrap (bwrap) is not installed, so the local sandbox cannot run programs.",
                hint="Install it: apt-get install bubblewrap (make run does this when run as root).",
                id="distill.W001",
            )
        ]
    return []
