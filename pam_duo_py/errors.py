"""The exception tree.

Everything that can go wrong talking to Duo is mapped to one of these classes
in one place (:mod:`pam_duo_py.duo`), so the decision engine can apply the
failmode rule by class alone:

* :class:`DuoUnavailable` -- Duo gave no usable answer (DNS, connect, TLS,
  timeout, 5xx, a malformed or unknown reply). Only this, and only at
  preauth, is subject to ``failmode``.
* :class:`DuoRefused` -- Duo answered, and the answer was an error (401, 429
  after our wait, other 4xx), or a well-formed reply whose ``result`` we do not
  know (:class:`DuoUnknownAnswer`). Never fails open.
"""


class PamDuoError(Exception):
    """Base class of the product's own errors."""


class ConfigError(PamDuoError):
    """A configuration problem; carries every problem found, each naming file and key."""

    def __init__(self, problems: list[str] | tuple[str, ...]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


class FileRuleError(PamDuoError):
    """A file that fails the ownership/permission rule, or cannot be read safely."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class UserLookupError(PamDuoError):
    """The user or group database could not be asked (directory down)."""


class ConversationError(PamDuoError):
    """The user could not be asked: conversation failure, EOF or Ctrl-C."""


class DuoError(PamDuoError):
    """Any failure of a Duo API call."""

    def __init__(self, message: str, *, code: int | None = None, status: int | None = None) -> None:
        self.code = code
        self.status = status
        super().__init__(message)


class DuoUnavailable(DuoError):
    """No usable answer from Duo (network, TLS, timeout, 5xx, malformed reply)."""


class DuoTimeout(DuoUnavailable):
    """The call's deadline passed before Duo answered."""


class DuoMalformedReply(DuoUnavailable):
    """Duo's reply could not be understood (bad JSON, missing or unknown fields)."""


class DuoRefused(DuoError):
    """Duo answered with an error: 401, 429 past our wait, or another 4xx."""


class DuoCredentialsRejected(DuoRefused):
    """HTTP 401: bad ikey/skey, bad signature, or the clock is too far off."""


class DuoRateLimited(DuoRefused):
    """HTTP 429 that did not clear within the call's deadline."""


class DuoUnknownAnswer(DuoRefused):
    """A well-formed Duo reply whose ``result`` we do not know: Duo answered, we cannot act on it."""
