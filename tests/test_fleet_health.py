"""The rules of endpoint health on their own: leaving rotation, the probe backoff, rejoining."""

from __future__ import annotations

import logging

import pytest

from batchgen.run.fleet_health import DOWN_AFTER_FAILURES, PROBE_BACKOFF_MAX, EndpointHealth, Outage


def test_consecutive_failures_take_it_out_once_and_a_success_resets_the_count() -> None:
    health = EndpointHealth()
    for _ in range(DOWN_AFTER_FAILURES - 1):
        assert not health.failed(now=1.0)
    health.succeeded()
    assert [health.failed(now=2.0) for _ in range(DOWN_AFTER_FAILURES)][-1]
    assert not health.up and health.lost.is_set() and health.down_since == 2.0
    assert not health.failed(now=3.0), "already out: it leaves once"
    assert health.downs == 1


def test_probes_back_off_and_each_leaving_waits_longer_before_the_first() -> None:
    health = EndpointHealth()
    assert not health.probe_due(0.0), "never probed while up"
    health.unanswered(0.0)  # the first probe of the run got no answer
    assert not health.probe_due(0.0), "the backoff starts when the watcher first looks"
    assert not health.probe_due(0.99) and health.probe_due(1.0)
    health.probe_failed(1.0)
    assert not health.probe_due(2.9) and health.probe_due(3.0)  # 2 s, then 4 s...
    lost = health.lost
    health.rejoin()
    assert health.up and health.down_since is None and health.failures == 0
    assert health.lost is not lost and not health.lost.is_set()
    assert not health.probe_due(10.0)  # forgets its schedule while up
    for times in range(1, 8):
        for _ in range(DOWN_AFTER_FAILURES):
            health.failed(now=100.0 * times)
        first = min(2.0 ** (times - 1), PROBE_BACKOFF_MAX)
        start = 100.0 * times
        assert not health.probe_due(start)
        assert not health.probe_due(start + first - 0.01) and health.probe_due(start + first)
        health.rejoin()
        health.probe_due(start)


def test_an_outage_lasts_until_its_wait_and_ends_when_one_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    outage = Outage(5.0, lambda: now[0])
    caplog.set_level(logging.WARNING)
    assert not outage.lasted()
    now[0] = 4.9
    assert not outage.lasted()
    now[0] = 5.0
    assert outage.lasted()
    outage.over()
    assert "answers again" in caplog.text
    now[0] = 6.0
    assert not outage.lasted(), "a new outage starts its own wait"
