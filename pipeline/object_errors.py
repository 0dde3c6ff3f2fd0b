"""Errors of object-store clients, as one line a user can act on.

The clients' errors run to dozens of lines (a debug dump, the server's XML body); the job, the CLI and
the trainer print one line naming the URL, the status and the server's code and message.
"""

from __future__ import annotations

import re


def one_line(err: BaseException) -> str:
    """The first meaningful line of a client error (they run to dozens of lines of debug output); a
    server's XML error body becomes its status, code and message (``403 Forbidden: SignatureDoesNotMatch
    (...)``)."""
    text = " ".join(str(err).split("\n\nDebug source")[0].split())
    code = re.search(r"<Code>([^<]+)</Code>", text)
    if code:
        status = re.search(r"status code: (\d{3}[A-Za-z ]*)", text)
        message = re.search(r"<Message>([^<]+)</Message>", text)
        text = f"{status.group(1).strip() if status else 'error'}: {code.group(1)}" + \
            (f" ({message.group(1)})" if message else "")
    return text[:300]


CREDENTIALS_HINT = ("check the credentials in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                    "AWS_SESSION_TOKEN; GOOGLE_APPLICATION_CREDENTIALS; AZURE_STORAGE_*) and the bucket's permissions")


def denied(err: BaseException, line: str) -> bool:
    """Whether a client error is the server refusing these credentials (401/403), not a network failure."""
    import obstore.exceptions as oe

    return isinstance(err, oe.PermissionDeniedError | oe.UnauthenticatedError) or \
        re.search(r"\b(401|403)\b", line) is not None
