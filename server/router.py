"""Which variant of a deployment answers a request: the champion, or the challenger for its share of traffic.

With a routing key (gRPC metadata ``x-routing-key``, HTTP ``X-Routing-Key``) the choice is sticky: a stable hash
of the model and the key, mapped onto [0, 100), is compared with the challenger's share, so the same key always
reaches the same variant for a given split (and a key that reached the challenger at 10% still does at 20%).
Without a key the choice is random in the configured proportion. A batch is answered whole by one variant.
"""

import hashlib
import random

from server.domain import Deployment, LoadedModel, RequestContext

CHAMPION = "champion"
CHALLENGER = "challenger"
_HASH_SPACE = float(1 << 64)


def key_position(model: str, routing_key: str) -> float:
    """Where ``routing_key`` falls in [0, 100) for ``model``: the same for every process and every restart."""
    digest = hashlib.blake2b(f"{model}\x00{routing_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _HASH_SPACE * 100.0


class Router:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._random = (rng or random.Random()).random  # noqa: S311 - a traffic split, not a secret

    def choose(self, deployment: Deployment, context: RequestContext) -> tuple[LoadedModel, str]:
        """The model that answers and its variant name."""
        challenger = deployment.challenger
        share = deployment.challenger_percent
        if challenger is None or share <= 0.0:
            return deployment.champion, CHAMPION
        if context.routing_key is not None:
            position = key_position(deployment.champion.description.ref.name, context.routing_key)
        else:
            position = self._random() * 100.0
        return (challenger, CHALLENGER) if position < share else (deployment.champion, CHAMPION)
