"""The rollout units without a server: traffic weights and where they route (traffic.py), a
canary's judge and its rollback over the engine's shared table and statistics (rollback.py),
and the shadow's comparison rule (shadow.py)."""

import math
from collections import Counter

import numpy as np
import pytest

from service.engine import State, VersionTable
from service.engine.stats import Stats
from service.rollback import CanaryWatch
from service.settings import Settings
from service.shadow import Copies, compare
from service.traffic import (
    LATENCY_BUCKETS,
    Answers,
    Limits,
    Router,
    Shadow,
    canaries,
    check_weights,
    p99,
    parse_shadows,
    parse_traffic,
    verdict,
)

# -- weights -----------------------------------------------------------------------------


def test_the_traffic_setting_names_models_then_their_versions():
    parsed = parse_traffic(["mlp:1=90", "2=10", "resnet:3=1"])
    assert parsed == {"mlp": {1: 90, 2: 10}, "resnet": {3: 1}}


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (["1=90"], "expected MODEL:VERSION=WEIGHT"),
        (["mlp:1"], "expected MODEL:VERSION=WEIGHT"),
        (["mlp:1=x"], "expected MODEL:VERSION=WEIGHT"),
        (["mlp:0=1"], "not a version number"),
        (["mlp:1=0"], "at least one weight must be above 0"),
        (["mlp:1=2000000"], "0 to 1000000"),
        ([f"mlp:{v}=1" if v == 1 else f"{v}=1" for v in range(1, 10)], "at most 8 versions"),
    ],
)
def test_a_bad_traffic_setting_says_what_is_expected(setting, message):
    with pytest.raises(ValueError, match=message):
        parse_traffic(setting)


def test_weights_from_a_request_body_must_be_integers():
    assert check_weights({"1": 3, "2": 0}, "weights") == {1: 3, 2: 0}
    for bad in ({"1": 1.5}, {"1": True}, {"1": "3"}, {"one": 1}):
        with pytest.raises(ValueError, match="weights"):
            check_weights(bad, "weights")


def test_the_shadow_setting_is_model_version_and_fraction():
    assert parse_shadows(["mlp:2@0.1", "resnet:3@1"]) == {
        "mlp": Shadow(2, 0.1),
        "resnet": Shadow(3, 1.0),
    }
    for bad in (["mlp:2"], ["mlp:2@0"], ["mlp:2@1.5"], ["mlp:x@0.5"], ["mlp:2@x"]):
        with pytest.raises(ValueError, match="expected MODEL:VERSION@FRACTION"):
            parse_shadows(bad)


def test_the_settings_parse_traffic_shadow_and_canary_limits_once():
    s = Settings(traffic="mlp:1=90,2=10", shadow="mlp:3@0.5", canary_max_p99=0.2)
    assert s.traffic_weights == {"mlp": {1: 90, 2: 10}}
    assert s.shadows == {"mlp": Shadow(3, 0.5)}
    assert s.canary_limits == Limits(None, 0.2, 60.0) and s.canary_limits.on
    assert not Settings().canary_limits.on


# -- routing -----------------------------------------------------------------------------


def draws(router: Router, n: int = 10_000) -> Counter:
    return Counter(router.pick(i / n) for i in range(n))


def test_weights_split_requests_in_proportion():
    router = Router([1, 2], {1: 90, 2: 10}, None)
    assert draws(router) == {1: 9000, 2: 1000}
    assert router.primary == 1
    assert router.shares() == {1: 0.9, 2: 0.1}


def test_without_weights_the_highest_version_takes_everything():
    router = Router([1, 2, 3], {}, None)
    assert draws(router, 100) == {3: 100} and router.primary == 3


def test_a_version_without_a_weight_or_not_serving_gets_nothing():
    assert draws(Router([1, 2, 3], {2: 5, 7: 5}, None), 100) == {2: 100}
    # weights only for versions that do not serve (yet): the highest serving one
    assert draws(Router([1, 2], {5: 1}, None), 100) == {2: 100}


def test_the_shadow_takes_no_unversioned_request_unless_it_alone_serves():
    assert draws(Router([1, 2], {}, 2), 100) == {1: 100}
    assert draws(Router([2], {}, 2), 100) == {2: 100}


def test_a_tie_makes_the_lower_version_primary_and_the_other_a_canary():
    assert Router([1, 2], {1: 50, 2: 50}, None).primary == 1
    assert canaries({1: 50, 2: 50}) == [2]
    assert canaries({1: 10, 2: 80, 3: 10}) == [1, 3]
    assert canaries({1: 100, 2: 0}) == []


def test_no_serving_version_routes_nowhere():
    router = Router([], {1: 1}, None)
    assert router.pick(0.5) is None and router.primary is None and router.shares() == {}


# -- judging a canary ----------------------------------------------------------------------


def buckets(**counts: int) -> tuple[int, ...]:
    """Answers per latency bucket, by upper bound: buckets(le_0_01=5)."""
    found = [0] * (len(LATENCY_BUCKETS) + 1)
    for name, count in counts.items():
        found[LATENCY_BUCKETS.index(float(name[3:].replace("_", ".")))] = count
    return tuple(found)


def test_p99_interpolates_within_its_bucket_as_prometheus_does():
    assert p99(buckets(le_0_01=100)) == pytest.approx(0.005 + 0.005 * 0.99)
    assert p99(buckets(le_0_001=98, le_0_5=2)) == pytest.approx(0.2 + 0.3 * 0.5)
    past = [0] * len(LATENCY_BUCKETS) + [10]  # all beyond the last bound
    assert p99(past) == LATENCY_BUCKETS[-1]


def test_a_canary_is_judged_only_on_enough_answers():
    limits = Limits(0.05, None, 30.0)
    assert verdict(Answers(19, 19, buckets(le_0_01=19)), limits) is None
    reason = verdict(Answers(40, 4, buckets(le_0_01=40)), limits)
    assert reason is not None and "4 of its 40 answers" in reason and "10.0%" in reason
    assert verdict(Answers(40, 2, buckets(le_0_01=40)), limits) is None  # 5%: not above


def test_a_slow_canary_is_rolled_back_on_its_p99():
    limits = Limits(None, 0.1, 30.0)
    assert verdict(Answers(100, 0, buckets(le_0_01=100)), limits) is None
    reason = verdict(Answers(100, 0, buckets(le_0_01=90, le_1=10)), limits)
    assert reason is not None and "TENSORGATE_CANARY_MAX_P99=0.1" in reason


def test_the_watch_rolls_a_failing_canary_back_in_the_shared_table():
    table, stats = VersionTable(["mlp"], capacity=4), Stats(4)
    slots = {v: table.claim("mlp", v) for v in (1, 2)}
    for slot in slots.values():
        table.set_state(slot, State.SERVING)
    table.set_weights("mlp", {1: 90, 2: 10})
    watch = CanaryWatch(table, stats, Limits(0.05, None, 60.0))
    for _ in range(50):  # answered before the watch first looked: not in its window
        stats.request(slots[2], "fail", 0.001, server_error=True)
    watch.step()
    for _ in range(30):
        stats.request(slots[2], "success", 0.001)
        stats.request(slots[1], "fail", 0.001, server_error=True)  # the primary is not judged
    watch.next_check = 0
    watch.step()
    assert table.weights("mlp") == {1: 90, 2: 10}
    stats.request(slots[2], "fail", 0.001, server_error=True)
    stats.request(slots[2], "fail", 0.001, server_error=True)  # 2 of 32: 6%
    watch.next_check = 0
    watch.step()
    assert table.weights("mlp") == {1: 90, 2: 0}
    assert table.rollback("mlp").startswith("version 2: 2 of its 32 answers")
    table.set_weights("mlp", {1: 1, 2: 1})  # an operator sets weights again: the note goes
    assert table.rollback("mlp") == ""


# -- comparing a shadow's outputs --------------------------------------------------------


ONE = np.array([0])  # one copy, its rows from the first


def test_a_classifier_shadow_agrees_on_the_argmax_and_reports_the_largest_difference():
    a = np.array([[0.9, 0.1], [0.4, 0.6]], np.float32)
    same_classes = np.array([[0.7, 0.3], [0.45, 0.55]], np.float32)
    agree, difference = compare([a], [same_classes], 2, ONE)
    assert agree.tolist() == [True] and difference.tolist() == [pytest.approx(0.2)]
    flipped = np.array([[0.9, 0.1], [0.6, 0.4]], np.float32)
    agree, difference = compare([a], [flipped], 2, ONE)
    assert agree.tolist() == [False] and difference.tolist() == [pytest.approx(0.2)]


def test_other_outputs_agree_within_the_export_tolerance():
    a = np.zeros((2, 3), np.float32)
    assert compare([a], [a + 5e-5], 0, ONE).agree.all()
    assert not compare([a], [a + 5e-4], 0, ONE).agree.any()
    assert not compare([a], [a[:1]], 0, ONE).agree.any()  # another shape
    assert compare([a], [a[:1]], 0, ONE).difference.tolist() == [math.inf]
    ints = np.array([1, 2], np.int64)
    agree, difference = compare([ints], [ints], 0, ONE)
    assert agree.tolist() == [True] and difference.tolist() == [0.0]
    words = np.array([b"a", b"b"])
    assert compare([words], [words], 0, ONE).agree.all()
    assert not compare([words], [np.array([b"a", b"c"])], 0, ONE).agree.any()


def test_a_flush_is_compared_per_copy_in_one_pass():
    """Three copies of 1, 2 and 1 rows: only the second's second row flips its class, and
    the third's differs most (with the same class)."""
    answers = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], np.float32)
    shadow = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.99, 0.01]], np.float32)
    agree, difference = compare([answers], [shadow], 2, np.array([0, 1, 3]))
    assert agree.tolist() == [True, False, True]
    assert difference.tolist() == pytest.approx([0.0, 0.3, 0.39])
    # other outputs: each copy within the tolerance or not, row by row
    values = np.zeros((4, 3), np.float32)
    moved = values.copy()
    moved[3, 2] = 1e-3
    assert compare([values], [moved], 0, np.array([0, 1, 3])).agree.tolist() == [
        True,
        True,
        False,
    ]


def test_shadow_copies_go_as_one_batch_and_say_where_each_begins():
    copies = Copies(target=None, labels=2, urgency=None)  # only their tensors matter here
    first = [np.zeros((1, 3), np.float32), np.zeros((1,), np.int64)]
    second = [np.ones((2, 3), np.float32), np.ones((2,), np.int64)]
    copies.add(first, [np.zeros((1, 2), np.float32)])
    copies.add(second, [np.ones((2, 2), np.float32)])
    assert copies.instances == 3
    assert [a.shape for a in copies.joined()] == [(3, 3), (3,)]
    assert [a.tolist() for a in copies.joined_answers()] == [[[0, 0], [1, 1], [1, 1]]]
    assert copies.starts().tolist() == [0, 1]
