"""Pure parts: validation (NACK reasons), translation to Envoy JSON, device
accounting, placement, and the client's contract over the in-memory double."""

from __future__ import annotations

import dataclasses
import math

import pytest

from cluster_mgr.model import MeshShare
from dpu_agent import config as cfg
from dpu_agent.client import FakeAgentTransport, MeshClient
from dpu_agent.device import DeviceError, DeviceSample, charge, preset
from dpu_agent.placement import cluster_name, mesh_configs


def good() -> cfg.MeshResources:
    return cfg.MeshResources(
        clusters=(
            cfg.Cluster("a", (cfg.Endpoint("127.0.0.1", 8001),)),
            cfg.Cluster("b", (cfg.Endpoint("127.0.0.1", 8002, 3),),
                        outlier_detection=cfg.OutlierDetection()),
        ),
        routes=(cfg.Route("web", "web", (cfg.WeightedTarget("a", 70), cfg.WeightedTarget("b", 30)),
                          rate_limit="web"),),
        rate_limits=(cfg.RateLimit("web", 10, 5, 100),),
    )


def test_good_config_validates() -> None:
    assert cfg.validate(good()) == []


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda r: dataclasses.replace(r, routes=(dataclasses.replace(
            r.routes[0], targets=(cfg.WeightedTarget("nope", 1),)),)), "unknown cluster 'nope'"),
        (lambda r: dataclasses.replace(r, routes=(dataclasses.replace(
            r.routes[0], targets=(cfg.WeightedTarget("a", -5), cfg.WeightedTarget("b", 10))),)),
         "must be a non-negative integer"),
        (lambda r: dataclasses.replace(r, rate_limits=(cfg.RateLimit("web", 10, 5, 0),)),
         "fill_interval_ms must not be zero"),
        (lambda r: dataclasses.replace(r, rate_limits=(cfg.RateLimit("web", 10, 5, 10),)),
         "fill_interval_ms"),
        (lambda r: dataclasses.replace(r, routes=(dataclasses.replace(
            r.routes[0], targets=(cfg.WeightedTarget("a", 0),)),)), "weights sum to zero"),
        (lambda r: dataclasses.replace(r, routes=(dataclasses.replace(
            r.routes[0], rate_limit="other"),)), "unknown rate_limit"),
        (lambda r: dataclasses.replace(r, clusters=r.clusters + (r.clusters[0],)),
         "duplicate cluster names"),
        (lambda r: dataclasses.replace(r, clusters=(cfg.Cluster(
            "a", (cfg.Endpoint("localhost", 1),)), r.clusters[1])), "IP address literal"),
        (lambda r: dataclasses.replace(r, clusters=(cfg.Cluster(
            "a", (cfg.Endpoint("127.0.0.1", 70000),)), r.clusters[1])), "port"),
        (lambda r: dataclasses.replace(r, clusters=(cfg.Cluster(
            "a", (cfg.Endpoint("127.0.0.1", 1, 0),)), r.clusters[1])), "weight"),
        (lambda r: dataclasses.replace(r, clusters=(r.clusters[0], dataclasses.replace(
            r.clusters[1], outlier_detection=cfg.OutlierDetection(max_ejection_percent=101)))),
         "max_ejection_percent"),
        (lambda r: dataclasses.replace(r, clusters=(dataclasses.replace(
            r.clusters[0], circuit_breakers=cfg.CircuitBreakers(max_pending_requests=-1)),
            r.clusters[1])), "max_pending_requests"),
        (lambda r: dataclasses.replace(r, routes=r.routes + (dataclasses.replace(
            r.routes[0], name="web2"),)), "same domain and prefix"),
    ],
)
def test_bad_configs_are_rejected_with_a_reason(mutate, needle) -> None:  # type: ignore[no-untyped-def]
    errors = cfg.validate(mutate(good()))
    assert errors, "expected a NACK"
    assert any(needle in e for e in errors), errors


def test_translation_mirrors_envoy_shapes_and_defaults() -> None:
    cds = cfg.cds_document(good(), "v7")
    assert cds["version_info"] == "v7"
    a, b = cds["resources"]
    th = a["circuit_breakers"]["thresholds"][0]
    assert (th["max_connections"], th["max_pending_requests"], th["max_requests"],
            th["max_retries"]) == (1024, 1024, 1024, 3)
    assert "outlier_detection" not in a
    assert b["outlier_detection"] == {"consecutive_5xx": 5, "interval": "10.000s",
                                      "base_ejection_time": "30.000s", "max_ejection_percent": 10}
    lb = b["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert lb["load_balancing_weight"] == 3
    rds = cfg.rds_document(good(), "v7")
    vh = rds["resources"][0]["virtual_hosts"][0]
    assert vh["domains"] == ["web", "web:*"]
    route = vh["routes"][0]
    assert route["route"]["weighted_clusters"]["clusters"] == [
        {"name": "a", "weight": 70}, {"name": "b", "weight": 30}]
    bucket = route["typed_per_filter_config"][cfg.RATE_LIMIT_FILTER]["token_bucket"]
    assert bucket == {"max_tokens": 10, "tokens_per_fill": 5, "fill_interval": "0.100s"}


def test_longest_prefix_first() -> None:
    res = dataclasses.replace(good(), routes=(
        cfg.Route("root", "web", (cfg.WeightedTarget("a", 1),)),
        cfg.Route("api", "web", (cfg.WeightedTarget("b", 1),), prefix="/api"),
    ), rate_limits=())
    routes = cfg.rds_document(res, "1")["resources"][0]["virtual_hosts"][0]["routes"]
    assert [r["name"] for r in routes] == ["api", "root"]


@pytest.mark.parametrize(("rps", "expect"), [
    (100.0, (10, 10, 100)), (25.0, (2, 2, 100)), (2.0, (1, 1, 500)), (0.0, (1, 1, 3_600_000)),
])
def test_token_bucket_for_rate(rps: float, expect: tuple[int, int, int]) -> None:
    rl = cfg.token_bucket_for_rate("x", rps)
    assert (rl.max_tokens, rl.tokens_per_fill, rl.fill_interval_ms) == expect
    assert cfg.validate(cfg.MeshResources(rate_limits=(rl,))) == []


def test_device_presets_and_charging() -> None:
    bf2, bf3 = preset("bluefield2"), preset("BlueField-3")
    assert (bf2.cores, bf2.line_rate_gbps) == (8, 200.0)
    assert (bf3.cores, bf3.line_rate_gbps, bf3.memory_gib) == (16, 400.0, 32.0)
    small = preset("bluefield2", cores=2)
    assert small.cores == 2 and small.admission_rps == 2 * bf2.rps_per_core
    use = charge(bf2, DeviceSample(0.0, 1.0, 0.0, 0.0), DeviceSample(2.0, 2.0, 25e9, 1000.0, 5.0))
    assert use.dpu_cpu_s == pytest.approx(1.0 * bf2.arm_slowdown)
    assert use.core_utilisation == pytest.approx(bf2.arm_slowdown / (8 * 2.0))
    assert use.line_rate_utilisation == pytest.approx(25e9 / (25e9 * 2.0))
    assert use.rps == 500.0 and use.shed == 5.0
    with pytest.raises(DeviceError):
        charge(bf2, DeviceSample(1.0, 2.0, 0, 0), DeviceSample(2.0, 1.0, 0, 0))
    with pytest.raises(DeviceError):
        preset("bluefield9")


def test_placement_turns_mesh_shares_into_node_configs() -> None:
    endpoints = {"web": {"n1": [("127.0.0.1", 9001)], "n2": [("127.0.0.1", 9002),
                                                           ("127.0.0.1", 9003)]}}
    shares = [MeshShare("n1", "web", 50.0, (("n1", 1.0), ("n2", 3.0))),
              MeshShare("n2", "web", float("inf"))]
    out = mesh_configs(shares, endpoints)
    assert set(out) == {"n1", "n2"}
    for res in out.values():
        assert cfg.validate(res) == []
    r1 = out["n1"].routes[0]
    assert r1.domain == "web" and r1.rate_limit
    w = {t.cluster: t.weight for t in r1.targets}
    assert w[cluster_name("web", "n2")] == 3 * w[cluster_name("web", "n1")]
    assert out["n1"].rate_limits[0].tokens_per_fill == 5
    # no weights: spread by replica count; infinite rate: no limit
    r2 = out["n2"].routes[0]
    assert {t.cluster: t.weight for t in r2.targets} == {
        cluster_name("web", "n1"): 3333, cluster_name("web", "n2"): 6667}
    assert r2.rate_limit == "" and out["n2"].rate_limits == ()
    with pytest.raises(ValueError):
        mesh_configs([MeshShare("n1", "web", 1.0, (("n1", -1.0),))], endpoints)


def test_client_contract_over_the_test_double() -> None:
    fake = FakeAgentTransport()
    client = MeshClient(fake)
    ok = client.push(good(), "v1")
    assert ok.ack and ok.version == "v1" and fake.resources == good()
    bad = dataclasses.replace(good(), rate_limits=(cfg.RateLimit("web", 1, 1, 0),))
    nack = client.push(bad, "v2")
    assert not nack.ack and nack.version == "v1" and nack.code == 3
    assert "fill_interval_ms" in nack.reason and fake.resources == good()
    fake.reject_next = "Envoy says no"
    nack = client.push(good(), "v3")
    assert (nack.ack, nack.version, nack.code, nack.reason) == (False, "v1", 9, "Envoy says no")
    fake.counters["rl_web.http_local_rate_limit.rate_limited"] = 4.0
    assert client.stats().rate_limited("web") == 4.0


def test_sidecar_mode_keeps_routes_and_swaps_endpoints() -> None:
    from dpu_agent.sidecar import inbound_resources, outbound_resources

    res = good()
    out = outbound_resources(res, {("127.0.0.1", 8001): ("127.0.0.1", 7001),
                                   ("127.0.0.1", 8002): ("127.0.0.1", 7002)})
    assert out.routes == res.routes and out.rate_limits == res.rate_limits
    assert [(e.port, e.weight) for c in out.clusters for e in c.endpoints] == [(7001, 1), (7002, 3)]
    inbound = inbound_resources("web", ("127.0.0.1", 8001))
    assert cfg.validate(inbound) == [] and inbound.routes[0].domain == "web"


def test_job_window_turns_cumulative_stats_into_window_deltas() -> None:
    from dpu_agent.client import MeshStats
    from dpu_agent.telemetry import job_window

    c1, c2 = cluster_name("web", "n1"), cluster_name("web", "n2")

    def st(total1: float, total2: float, limited: float, ej: float) -> MeshStats:
        return MeshStats("v", {f"cluster.{c1}.upstream_rq_total": total1,
                               f"cluster.{c2}.upstream_rq_total": total2,
                               f"cluster.{c2}.outlier_detection.ejections_active": ej,
                               "rl_web.http_local_rate_limit.rate_limited": limited},
                         {}, {"dpu.core_utilisation": 0.25}, 0.0)

    w = job_window("web", ["n1", "n2"], st(10, 5, 2, 0), st(30, 6, 9, 1))
    assert w["mesh.upstream_rq_total"] == 21 and w["mesh.rate_limited"] == 7
    assert w["mesh.rejected"] == 7 and w["mesh.ejections_active"] == 1
    assert w["dpu.core_utilisation"] == 0.25


def test_window_quantiles_from_bucket_totals() -> None:
    from dpu_agent.client import MeshStats
    from dpu_agent.telemetry import histogram_delta, quantile_ms

    def stats(buckets: dict[str, tuple[tuple[float, float, int], ...]]) -> MeshStats:
        return MeshStats("v", {}, {}, {}, 0.0, buckets=buckets)

    name = "cluster.{}.upstream_rq_time"
    prev = stats({name.format("a"): ((1.0, 0.1, 10),), name.format("b"): ()})
    now = stats({name.format("a"): ((1.0, 0.1, 10), (2.0, 0.1, 50)),
                 name.format("b"): ((9.0, 1.0, 50),)})  # fmt: skip
    h = histogram_delta(prev, now, ["a", "b"])
    assert h == {(2.0, 0.1): 50, (9.0, 1.0): 50}  # only the requests between the samples
    assert 2.0 <= quantile_ms(h, 0.5) <= 2.1 and 9.0 <= quantile_ms(h, 0.99) <= 10.0
    assert math.isnan(quantile_ms({}, 0.5))
