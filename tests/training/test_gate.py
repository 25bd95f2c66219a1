import pytest

from training.gate import ChampionScore, Criterion, Floor, GateRules, decide

RMSE = Criterion("rmse", higher_is_better=False)
ACCURACY = Criterion("accuracy", higher_is_better=True)
MACRO_F1 = Criterion("macro_f1", higher_is_better=True)
HOUSING = GateRules(floor=Floor(RMSE, 0.45, "housing_max_rmse"), ranking=(RMSE,))
IRIS = GateRules(floor=Floor(Criterion("cv_accuracy", True), 0.95, "iris_min_accuracy"), ranking=(ACCURACY, MACRO_F1))


def test_first_model_passing_the_floor_is_promoted() -> None:
    decision = decide({"rmse": 0.44}, None, HOUSING)
    assert decision.promoted and decision.label == "promoted"
    assert decision.reason == "no champion yet and rmse 0.4400 passes the floor 0.45"


def test_floor_value_itself_passes() -> None:
    assert decide({"rmse": 0.45}, None, HOUSING).promoted


@pytest.mark.parametrize("champion", [None, ChampionScore(1, {"rmse": 0.9})])
def test_floor_blocks_promotion_even_against_a_worse_champion(champion: ChampionScore | None) -> None:
    decision = decide({"rmse": 0.5}, champion, HOUSING)
    assert not decision.promoted and decision.label == "rejected"
    assert decision.reason == "rmse 0.5000 is above the floor housing_max_rmse=0.45"


def test_higher_is_better_floor_says_below() -> None:
    decision = decide({"cv_accuracy": 0.9, "accuracy": 1.0, "macro_f1": 1.0}, None, IRIS)
    assert decision.reason == "cv_accuracy 0.9000 is below the floor iris_min_accuracy=0.95"


@pytest.mark.parametrize(
    ("rmse", "promoted", "reason"),
    [
        (0.40, True, "rmse 0.4000 beats champion v3's 0.4200"),
        (0.42, True, "ties champion v3 (rmse 0.4200)"),
        (0.43, False, "rmse 0.4300 is worse than champion v3's 0.4200"),
    ],
)
def test_candidate_must_be_at_least_as_good_as_the_champion(rmse: float, promoted: bool, reason: str) -> None:
    decision = decide({"rmse": rmse}, ChampionScore(3, {"rmse": 0.42}), HOUSING)
    assert (decision.promoted, decision.reason) == (promoted, reason)


@pytest.mark.parametrize(
    ("macro_f1", "promoted"),
    [(0.95, True), (0.96, True), (0.94, False)],
)
def test_accuracy_tie_is_broken_by_macro_f1(macro_f1: float, promoted: bool) -> None:
    champion = ChampionScore(1, {"accuracy": 0.9, "macro_f1": 0.95})
    assert decide({"cv_accuracy": 0.97, "accuracy": 0.9, "macro_f1": macro_f1}, champion, IRIS).promoted is promoted


def test_better_accuracy_wins_over_worse_macro_f1() -> None:
    champion = ChampionScore(1, {"accuracy": 0.9, "macro_f1": 0.95})
    assert decide({"cv_accuracy": 0.97, "accuracy": 0.95, "macro_f1": 0.5}, champion, IRIS).promoted
