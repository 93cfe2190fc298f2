"""Logging filters named in settings.LOGGING."""

import logging


class ForbiddenWithoutTraceback(logging.Filter):
    """Django logs each refused request (PermissionDenied, a 403) at WARNING with the exception's whole
    traceback: a user without a role is no fault of the code, and one line says all there is to say."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "status_code", None) == 403:
            record.exc_info = None
            record.exc_text = None
        return True
