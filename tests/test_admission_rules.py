"""The admission rules as pure functions (service/admission.py) and their setting."""

import pytest

from service.admission import (
    Asked,
    Cost,
    Priorities,
    estimated_seconds,
    from_headers,
    from_parameters,
    queue_share,
    resolve,
)
from service.errors import BadRequest
from service.settings import Settings


def test_triton_parameters_give_a_timeout_in_microseconds_and_a_priority():
    assert from_parameters({}) == Asked(None, 0)
    assert from_parameters({"timeout": 20_000, "priority": 2}) == Asked(0.02, 2)
    for bad in ({"timeout": "20ms"}, {"timeout": -1}, {"timeout": True}, {"priority": 1.5}):
        with pytest.raises(BadRequest, match="must be a non-negative integer"):
            from_parameters(bad)


def test_headers_give_a_timeout_in_seconds_and_a_priority():
    assert from_headers({}) == Asked(None, 0)
    assert from_headers({"request-timeout": "0.25", "inference-priority": "1"}) == Asked(0.25, 1)
    for value in ("soon", "-0.1", "nan", "inf"):
        with pytest.raises(BadRequest, match="Request-Timeout must be a number of seconds"):
            from_headers({"request-timeout": value})
    with pytest.raises(BadRequest, match="Inference-Priority must be a non-negative integer"):
        from_headers({"inference-priority": "-1"})


def test_the_tighter_timeout_wins_and_a_given_priority_is_kept():
    body, header = Asked(0.5, 0), Asked(0.2, 1)
    assert body.tighter(header) == Asked(0.2, 1)
    assert Asked(None, 2).tighter(header) == Asked(0.2, 2)
    assert Asked().tighter(Asked()) == Asked()


def test_resolve_caps_the_timeout_and_picks_the_default_level():
    at = 100.0
    own = resolve(Asked(0.02, 0), Priorities(3, 2), 30.0, at, "mlp")
    assert (own.timeout, own.deadline, own.level, own.levels, own.own_deadline) == (
        0.02,
        100.02,
        2,
        3,
        True,
    )
    capped = resolve(Asked(60.0, 1), Priorities(3, 2), 30.0, at, "mlp")
    assert (capped.timeout, capped.level, capped.own_deadline) == (30.0, 1, False)
    off = resolve(Asked(None, 7), Priorities(), 30.0, at, "mlp")  # one level: ignored
    assert (off.level, off.levels) == (1, 1)
    with pytest.raises(BadRequest, match="priority 4 is beyond model 'mlp''s 3 levels"):
        resolve(Asked(None, 4), Priorities(3, 2), 30.0, at, "mlp")


def test_each_level_may_fill_its_share_of_the_queue_bound():
    assert [queue_share(256, level, 1) for level in (1,)] == [256]
    assert [queue_share(256, level, 2) for level in (1, 2)] == [256, 128]
    assert [queue_share(10, level, 3) for level in (1, 2, 3)] == [10, 7, 4]


def test_the_estimate_counts_the_batches_ahead_and_every_instance():
    cost = Cost(fixed=0.010, per_instance=0.001, max_batch_size=4, instances_per_request=2.0)
    assert estimated_seconds(0, 1, cost, workers=1) == pytest.approx(0.011)
    # 6 requests of 2 instances ahead: 12 instances, three batches before its own
    assert estimated_seconds(6, 1, cost, workers=1) == pytest.approx(4 * 0.010 + 13 * 0.001)
    # two workers share them: 6 instances each, one batch before its own
    assert estimated_seconds(6, 1, cost, workers=2) == pytest.approx(2 * 0.010 + 7 * 0.001)


def test_priority_levels_are_set_for_every_model_or_per_model():
    settings = Settings(priority_levels="2, resnet:4:1")
    assert settings.priorities("mlp") == Priorities(2, 2)  # the default level: the lowest
    assert settings.priorities("resnet") == Priorities(4, 1)
    assert Settings().priorities("mlp") == Priorities(1, 1)
    for bad in ("0", "9", "2:3", "mlp:x", "mlp:2:1:1"):
        with pytest.raises(ValueError, match="TENSORGATE_PRIORITY_LEVELS entry"):
            Settings(priority_levels=bad)
