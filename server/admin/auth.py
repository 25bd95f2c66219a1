"""Who may call the admin service: the holder of the bearer token, compared in constant time.

With no token configured every admin call is refused, unless the server runs in the explicit local-development
mode (``PREDICTOR_ADMIN_DEV_MODE``), which accepts any call and says so loudly at start-up. The token never
reaches a log line: only the outcome of the comparison is used.

A token call over a plaintext connection is refused (PERMISSION_DENIED, whatever the token) unless
``PREDICTOR_ADMIN_ALLOW_PLAINTEXT`` allows it: the bearer token would travel in cleartext. Development mode
allows it too, since ``make run`` serves plaintext on localhost, with or without a token.
"""

import hmac
import logging

from server.errors import AdminDisabledError, UnauthenticatedError

logger = logging.getLogger(__name__)
BEARER = "bearer "


class AdminAuthenticator:
    def __init__(self, token: str | None, *, dev_mode: bool, allow_plaintext: bool = False) -> None:
        self._token = token.encode() if token else None
        self._dev_mode = dev_mode and self._token is None
        self._allow_plaintext = allow_plaintext or dev_mode
        if allow_plaintext and self._token is not None:
            logger.warning(
                "PREDICTOR_ADMIN_ALLOW_PLAINTEXT is on: admin calls are accepted over plaintext connections, where "
                "the admin token travels in cleartext. Only on a network you trust, or serve TLS."
            )
        if self._dev_mode:
            logger.warning(
                "ADMIN CALLS ARE OPEN: PREDICTOR_ADMIN_DEV_MODE is on and no PREDICTOR_ADMIN_TOKEN is set; anyone "
                "who reaches this port can retrain, promote and roll back models. For local development only."
            )

    def check(self, authorization: str | None, *, private: bool) -> None:
        """Accept the ``authorization`` header or metadata value ("Bearer <token>"), or raise.

        ``private``: the call came over TLS (``server.tls.is_private``).
        """
        if self._dev_mode:
            return
        if self._token is None:
            raise AdminDisabledError(
                "admin calls are disabled: set PREDICTOR_ADMIN_TOKEN on the server (or PREDICTOR_ADMIN_DEV_MODE=true "
                "for local development)"
            )
        if not private and not self._allow_plaintext:
            raise AdminDisabledError(
                "admin calls need TLS: this connection is plaintext, where the admin token would travel in cleartext "
                "(serve TLS with PREDICTOR_TLS_CERT_FILE and PREDICTOR_TLS_KEY_FILE, or set "
                "PREDICTOR_ADMIN_ALLOW_PLAINTEXT=true on a trusted network)"
            )
        if authorization is None or not authorization.lower().startswith(BEARER):
            raise UnauthenticatedError("admin calls need the header 'authorization: Bearer <token>'")
        presented = authorization[len(BEARER) :].strip().encode()
        if not hmac.compare_digest(presented, self._token):
            raise UnauthenticatedError("the admin token is not valid")
