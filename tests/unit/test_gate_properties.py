"""Properties of the promotion gate over any sequence of candidates (hypothesis).

1. The decision rule (``flows.promote.decide`` behind the hard checks), replayed over any sequence
   of candidate scores, for either direction of metric, any margin and floor, and candidates that
   fail a hard check. Write ``gain(a, b)`` for how much better score ``a`` is than ``b`` (``a - b``
   when higher is better, ``b - a`` when lower is). After every candidate:

   - the champion is an eligible candidate seen so far (eligible: it loads, its signature matches,
     its score is finite and meets the floor), or none while no candidate was eligible;
   - no eligible candidate seen so far beats the champion by more than the margin:
     ``gain(x, champion) <= margin`` for each of them. So the champion is never worse than the best
     eligible candidate so far by more than the margin; with margin 0 it *is* the best, and of
     candidates tied on the best score the first one (a tie keeps the champion);
   - each move of the champion is a gain of more than the margin.

   The scores are all taken on one test split, as the gate scores challenger and champion on the
   challenger's dataset version (across versions the champion is rescored first).

2. The real ``promote`` and ``rollback`` flows on a real MLflow registry (SQLite under a temporary
   directory) and a real Prefect API, over any sequence of promotions (of new or already gated
   versions) and rollbacks: every gate decides as the rule above says, and every rollback moves
   ``champion`` back to the champion before it, walking back through the promotions in the order
   they happened, until it refuses at the first champion without changing anything. Besides the
   generated sequences, two pinned ones always run: gating the champion again and gating again a
   version deep in the history (both once broke rollback), a candidate below the floor, a tie.

CI runs derandomized (a fixed sequence of examples, no example database), without deadlines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flows.datasets import diamonds
from flows.datasets.store import write_version
from flows.policy import DIRECTIONS, PromotionPolicy
from flows.promote import decide, promote
from flows.registry import CHALLENGER, CHAMPION, REPLACED_TAG, current_champion
from flows.rollback import rollback
from ray_jobs.dataset import load_split
from ray_jobs.evaluate import predict_in_batches, score
from ray_jobs.models import spec_for
from ray_jobs.settings import Settings
from tests.registered import least_squares, register

CI = settings(
    derandomize=True,  # the same examples on every run: CI is reproducible
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)

# --- 1. the decision rule, replayed ------------------------------------------------------------------------------

METRICS = {"mnist-cnn": ["accuracy"], "diamonds-regressor": ["rmse", "mae", "r2"]}
POLICIES = st.sampled_from([(model, metric) for model, metrics in METRICS.items() for metric in metrics]).flatmap(
    lambda pair: st.builds(
        PromotionPolicy,
        model=st.just(pair[0]),
        metric=st.just(pair[1]),
        margin=st.one_of(st.just(0.0), st.sampled_from([0.01, 0.1]), st.floats(0, 1)),
        floor=st.one_of(st.none(), st.floats(-1, 2)),
    )
)
# Few distinct values make ties and near-ties common; NaN and infinities are scores that fail "predicts".
SCORES = st.one_of(
    st.sampled_from([0.0, 0.1, 0.5, 0.9, 0.91, 1.0]),
    st.floats(-1, 2),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)
CANDIDATES = st.lists(st.tuples(SCORES, st.booleans()), max_size=25)  # (test score, loads and signature ok)


def gain(policy: PromotionPolicy, a: float, b: float) -> float:
    """How much better ``a`` is than ``b`` under the policy's metric (written independently of the gate)."""
    return a - b if DIRECTIONS[policy.metric] == "max" else b - a


def eligible(policy: PromotionPolicy, value: float, checks_pass: bool) -> bool:
    """Passes the hard checks: loads with a matching signature, predicts a finite score, meets the floor."""
    if not checks_pass or not math.isfinite(value):
        return False
    return policy.floor is None or gain(policy, value, policy.floor) >= 0


def replay(policy: PromotionPolicy, candidates: list[tuple[float, bool]]) -> list[int | None]:
    """The champion (a candidate's index) after each candidate, as the gate decides: a candidate that
    fails a hard check is rejected before any comparison, else ``decide`` compares it with the champion."""
    champion, history = None, []
    for i, (value, checks_pass) in enumerate(candidates):
        if eligible(policy, value, checks_pass):
            if decide(policy, value, None if champion is None else candidates[champion][0]).promote:
                champion = i
        history.append(champion)
    return history


@settings(CI, max_examples=200)
@given(policy=POLICIES, candidates=CANDIDATES)
@example(  # better by exactly the margin: the champion stays
    policy=PromotionPolicy(model="mnist-cnn", metric="accuracy", margin=0.25), candidates=[(0.5, True), (0.75, True)]
)
def test_the_champion_is_never_worse_than_the_best_eligible_candidate_by_more_than_the_margin(policy, candidates):
    history = replay(policy, candidates)
    for seen, champion in enumerate(history, start=1):
        ok = [i for i in range(seen) if eligible(policy, *candidates[i])]
        if not ok:
            assert champion is None
            continue
        assert champion in ok
        c = candidates[champion][0]
        assert all(gain(policy, candidates[i][0], c) <= policy.margin for i in ok)
        if policy.margin == 0:
            best = max(ok, key=lambda i: (gain(policy, candidates[i][0], c), -i))
            assert champion == best, "with margin 0 the champion is the first candidate with the best score"
    moves = [(a, b) for a, b in zip([None, *history], history) if a != b]
    for before, after in moves:
        assert before is None or gain(policy, candidates[after][0], candidates[before][0]) > policy.margin


# --- 2. promote and rollback on a real registry ------------------------------------------------------------------

MODEL = "diamonds-regressor"
SPEC = spec_for(MODEL)
NAME = SPEC.registered_name
OFFSETS = (0.0, 0.15, 0.3, 5.0)  # off the least-squares fit: test RMSE grows with it; at 5.0 it is above the floor


@dataclass
class Pool:
    versions: list[str]  # registered versions of known test score; the last fails the floor
    scores: dict[str, float]  # each version's test RMSE, computed as the gate computes it
    margin: float  # a margin that changes some decisions and sits far from every gap between scores
    client: mlflow.MlflowClient


@pytest.fixture(scope="module")
def pool(tmp_path_factory, prefect_api) -> Pool:
    """A state directory with one diamonds version and linear regressors of known quality, one
    registered twice (a tie), one below the floor; no alias yet."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SKYTRAIN_STATE_DIR", str(tmp_path_factory.mktemp("gate-properties") / "state"))
        patch.delenv("SKYTRAIN_PROMOTION", raising=False)
        settings_ = Settings()
        mlflow.set_tracking_uri(settings_.mlflow_tracking_uri)
        frame = diamonds.read_csv(settings_.diamonds_location()).sample(1500, random_state=0)
        tables, manifest = diamonds.transform(frame, seed=0, val_fraction=0.1, test_fraction=0.2)
        path = Path(write_version(settings_.data_store, SPEC.dataset, "v1", tables, manifest))
        linear = {"arch": "linear", "hidden": 0}
        versions = [register(least_squares(path, offset), SPEC, path, linear) for offset in OFFSETS]
        client = mlflow.MlflowClient()
        twin = _copy(client, versions[1])  # the same model again: exactly the same score
        versions.insert(2, twin)
        x, y = load_split(path, "test")
        scores = {}
        for v in versions:
            model = mlflow.pyfunc.load_model(f"models:/{NAME}/{v}")
            scores[v] = score(SPEC.task, y, predict_in_batches(model.predict, x))["rmse"]
        assert scores[versions[1]] == scores[twin] and scores[versions[-1]] > 0.7  # a tie; below the floor
        passing = sorted({scores[v] for v in versions[:-1]})
        gaps = np.diff(passing)
        margin = float(gaps.min() + gaps.max()) / 2
        assert all(abs(margin - g) > 1e-4 for g in gaps), (passing, margin)
        yield Pool(versions, scores, margin, client)


def _copy(client: mlflow.MlflowClient, version: str) -> str:
    """A new registered version of the same logged model, with its lineage tags."""
    original = client.get_model_version(NAME, version)
    copy = client.create_model_version(
        NAME, original.source, run_id=original.run_id, model_id=original.source.removeprefix("models:/")
    )
    for key, value in original.tags.items():
        client.set_model_version_tag(NAME, copy.version, key, value)
    return str(copy.version)


# An operation: ("promote", index into the pool) or ("rollback", None).
OPERATIONS = st.lists(
    st.one_of(st.tuples(st.just("promote"), st.integers(0, len(OFFSETS))), st.just(("rollback", None))),
    min_size=1,
    max_size=5,
)


@settings(CI, max_examples=3)  # each example costs a few flow runs; the @example sequences run as well
@given(operations=OPERATIONS, with_margin=st.booleans())
# Gating a version again, the champion itself or one deep in the history, once rewrote the tag a
# rollback followed: the first refused ("already is the champion"), the second jumped forward.
@example(
    operations=[
        ("promote", 3),
        ("promote", 1),
        ("promote", 0),
        ("promote", 0),
        ("promote", 1),
        ("rollback", None),
        ("rollback", None),
    ],
    with_margin=False,
)
@example(  # below the floor: no champion to roll back to; a tie keeps the first twin, the first champion
    operations=[("promote", 4), ("rollback", None), ("promote", 2), ("promote", 1), ("rollback", None)],
    with_margin=False,
)
def test_gates_and_rollbacks_follow_the_rule_and_walk_back_through_the_promotions(pool, operations, with_margin):
    for alias in (CHAMPION, CHALLENGER):  # each example starts from a registry without aliases
        pool.client.delete_registered_model_alias(NAME, alias)
    policy = PromotionPolicy(model=MODEL, metric="rmse", margin=pool.margin if with_margin else 0.0, floor=0.7)
    history: list[str] = []  # the champions in the order the gate promoted them; the last is the champion
    for operation, index in operations:
        if operation == "promote":
            version = pool.versions[index]
            value = pool.scores[version]
            if not eligible(policy, value, True) or (history and history[-1] == version):
                expected = False
            else:
                expected = decide(policy, value, pool.scores[history[-1]] if history else None).promote
            record = promote(model=MODEL, version=version, margin=policy.margin)
            assert record["promote"] is expected, record["reason"]
            if expected:  # the registry records the champion it replaced, where a rollback returns to
                replaced = pool.client.get_model_version(NAME, version).tags[REPLACED_TAG]
                assert replaced == (history[-1] if history else "")
                history.append(version)
            elif eligible(policy, value, True) and history:
                assert gain(policy, value, pool.scores[history[-1]]) <= policy.margin
            assert str(pool.client.get_model_version_by_alias(NAME, CHALLENGER).version) == version
        elif len(history) < 2:
            champion = current_champion(pool.client, NAME)
            with pytest.raises(ValueError, match="has no champion" if not history else "was its first champion"):
                rollback(model=MODEL)
            assert current_champion(pool.client, NAME) == champion
        else:
            demoted = history.pop()
            record = rollback(model=MODEL, reason="property test")
            assert (record["from_version"], record["to_version"]) == (demoted, history[-1])
        assert current_champion(pool.client, NAME) == (history[-1] if history else None)
