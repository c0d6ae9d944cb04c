"""Prometheus metrics: scraped over HTTP from the exporter's own registry."""

from __future__ import annotations

import dataclasses
import urllib.error
import urllib.request

import pytest
from cli_fakes import FakeControlPlane
from prometheus_client.parser import text_string_to_metric_families

from cluster_mgr.metrics import MetricsExporter


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def exporter():
    exp = MetricsExporter("127.0.0.1:0")
    yield exp
    exp.stop()


def test_scrape_per_job_series(exporter: MetricsExporter, fake: FakeControlPlane) -> None:
    exporter.update(fake.status(), decision_ms=12.0)
    m = scrape(exporter.url)
    assert m[("cluster_mgr_job_allocation", (("job", "web"), ("resource", "cpu")))] == 2.7
    assert m[("cluster_mgr_job_allocation", (("job", "batch"), ("resource", "cpu")))] == 1.3
    assert m[("cluster_mgr_job_p99_ms", (("job", "web"),))] == 12.5
    assert m[("cluster_mgr_job_slo_met", (("job", "web"),))] == 1.0
    assert m[("cluster_mgr_job_slo_target_ms", (("job", "web"),))] == 50.0
    assert m[("cluster_mgr_job_reward", (("job", "web"),))] == 0.995
    assert m[("cluster_mgr_job_utility", (("job", "batch"),))] == 1.0
    # The batch job has no SLO and no latency: its series are absent, not a made-up 0.
    assert ("cluster_mgr_job_p99_ms", (("job", "batch"),)) not in m
    assert ("cluster_mgr_job_slo_met", (("job", "batch"),)) not in m
    assert m[("cluster_mgr_round", ())] == 3.0
    assert m[("cluster_mgr_round_decision_seconds_count", ())] == 1.0
    assert m[("cluster_mgr_round_decision_seconds_sum", ())] == pytest.approx(0.012)
    assert m[("cluster_mgr_round_decision_seconds_bucket", (("le", "0.025"),))] == 1.0
    assert m[("cluster_mgr_round_decision_seconds_bucket", (("le", "0.01"),))] == 0.0
    assert m[("cluster_mgr_telemetry_windows_total", ())] == 120.0
    assert m[("cluster_mgr_lost_windows_total", ())] == 2.0


def test_updates_follow_the_status(exporter: MetricsExporter, fake: FakeControlPlane) -> None:
    exporter.update(fake.status(), decision_ms=12.0)
    exporter.update(fake.status(), decision_ms=12.0)  # same round: decided once
    fake.remove("batch")
    fake.round, fake.windows, fake.lost = 4, 150, 3
    slow = fake.status()
    web = dataclasses.replace(slow.jobs[0], p99_ms=80.0, slo_met=False)
    exporter.update(dataclasses.replace(slow, jobs=(web,)), decision_ms=300.0)
    m = scrape(exporter.url)
    assert m[("cluster_mgr_round_decision_seconds_count", ())] == 2.0
    assert m[("cluster_mgr_telemetry_windows_total", ())] == 150.0  # counts the increase only
    assert m[("cluster_mgr_lost_windows_total", ())] == 3.0
    assert m[("cluster_mgr_job_slo_met", (("job", "web"),))] == 0.0
    assert m[("cluster_mgr_job_p99_ms", (("job", "web"),))] == 80.0
    assert m[("cluster_mgr_job_allocation", (("job", "web"), ("resource", "cpu")))] == 4.0
    # A removed job's series go away.
    assert not any(labels and ("job", "batch") in labels for _, labels in m)


def test_private_registries_and_stop(fake: FakeControlPlane) -> None:
    a, b = MetricsExporter("127.0.0.1:0"), MetricsExporter("127.0.0.1:0")
    try:
        a.update(fake.status())
        assert ("cluster_mgr_job_p99_ms", (("job", "web"),)) in scrape(a.url)
        assert ("cluster_mgr_job_p99_ms", (("job", "web"),)) not in scrape(b.url)
    finally:
        a.stop()
        b.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(a.url, timeout=2)
