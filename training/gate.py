"""The champion gate: decide from metrics alone whether a new model version takes the alias.

Pure functions on plain numbers, so the rules are tested without MLflow.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Criterion:
    """A metric and its direction."""

    metric: str
    higher_is_better: bool

    def compare(self, candidate: float, reference: float) -> int:
        """1 if ``candidate`` is better than ``reference``, -1 if worse, 0 if equal."""
        if candidate == reference:
            return 0
        return 1 if (candidate > reference) == self.higher_is_better else -1


@dataclass(frozen=True)
class Floor:
    """The least a model must reach to be served at all, whatever the champion scores."""

    criterion: Criterion
    threshold: float
    setting: str  # the settings field that holds the threshold, named in the reason

    def passes(self, metrics: Mapping[str, float]) -> bool:
        return self.criterion.compare(metrics[self.criterion.metric], self.threshold) >= 0


@dataclass(frozen=True)
class GateRules:
    floor: Floor
    ranking: Sequence[Criterion]
    """Held-out metrics compared with the champion's in order; a tie on one moves to the next."""


@dataclass(frozen=True)
class ChampionScore:
    version: int
    metrics: Mapping[str, float]
    """The champion's held-out metrics on the candidate's test split."""


@dataclass(frozen=True)
class GateDecision:
    promoted: bool
    reason: str

    @property
    def label(self) -> str:
        return "promoted" if self.promoted else "rejected"

    @property
    def tags(self) -> dict[str, str]:
        """How the decision is recorded on the run and on the model version."""
        return {"champion_gate": self.label, "champion_gate_reason": self.reason}


def decide(candidate: Mapping[str, float], champion: ChampionScore | None, rules: GateRules) -> GateDecision:
    """Promote when the floor passes and the candidate is at least as good as the champion, if any."""
    floor = rules.floor
    value = candidate[floor.criterion.metric]
    if not floor.passes(candidate):
        side = "below" if floor.criterion.higher_is_better else "above"
        return GateDecision(
            False, f"{floor.criterion.metric} {value:.4f} is {side} the floor {floor.setting}={floor.threshold}"
        )
    if champion is None:
        return GateDecision(
            True, f"no champion yet and {floor.criterion.metric} {value:.4f} passes the floor {floor.threshold}"
        )
    for criterion in rules.ranking:
        mine, theirs = candidate[criterion.metric], champion.metrics[criterion.metric]
        verdict = criterion.compare(mine, theirs)
        if verdict < 0:
            return GateDecision(
                False, f"{criterion.metric} {mine:.4f} is worse than champion v{champion.version}'s {theirs:.4f}"
            )
        if verdict > 0:
            return GateDecision(
                True, f"{criterion.metric} {mine:.4f} beats champion v{champion.version}'s {theirs:.4f}"
            )
    summary = ", ".join(f"{c.metric} {candidate[c.metric]:.4f}" for c in rules.ranking)
    return GateDecision(True, f"ties champion v{champion.version} ({summary})")
