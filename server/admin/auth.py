"""Who may call the admin service: the holder of the bearer token, compared in constant time.

With no token configured every admin call is refused, unless the server runs in the explicit local-development
mode (``PREDICTOR_ADMIN_DEV_MODE``), which accepts any call and says so loudly at start-up. The token never
reaches a log line: only the outcome of the comparison is used.
"""

import hmac
import logging

from server.errors import AdminDisabledError, UnauthenticatedError

logger = logging.getLogger(__name__)
BEARER = "bearer "


class AdminAuthenticator:
    def __init__(self, token: str | None, *, dev_mode: bool) -> None:
        self._token = token.encode() if token else None
        self._dev_mode = dev_mode and self._token is None
        if self._dev_mode:
            logger.warning(
                "ADMIN CALLS ARE OPEN: PREDICTOR_ADMIN_DEV_MODE is on and no PREDICTOR_ADMIN_TOKEN is set; anyone "
                "who reaches this port can retrain, promote and roll back models. For local development only."
            )

    def check(self, authorization: str | None) -> None:
        """Accept the ``authorization`` header or metadata value ("Bearer <token>"), or raise."""
        if self._dev_mode:
            return
        if self._token is None:
            raise AdminDisabledError(
                "admin calls are disabled: set PREDICTOR_ADMIN_TOKEN on the server (or PREDICTOR_ADMIN_DEV_MODE=true "
                "for local development)"
            )
        if authorization is None or not authorization.lower().startswith(BEARER):
            raise UnauthenticatedError("admin calls need the header 'authorization: Bearer <token>'")
        presented = authorization[len(BEARER) :].strip().encode()
        if not hmac.compare_digest(presented, self._token):
            raise UnauthenticatedError("the admin token is not valid")
