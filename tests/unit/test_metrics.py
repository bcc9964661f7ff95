from __future__ import annotations

import datetime
import math

from prometheus_client.parser import text_string_to_metric_families

from kpc_trio.license import LicenseInfo
from kpc_trio.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The rendered exposition parsed back, keyed by (sample name, sorted labels)."""
    parsed = text_string_to_metric_families(metrics.render().decode())
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in parsed
        for sample in family.samples
    }


def test_render_exposes_every_metric_with_kpc_prefix() -> None:
    families = {f.name for f in text_string_to_metric_families(Metrics().render().decode())}

    assert families >= {
        "kpc_connections_open",
        "kpc_connects",
        "kpc_connect_refusals",
        "kpc_packets_received",
        "kpc_packets_sent",
        "kpc_received_bytes",
        "kpc_sent_bytes",
        "kpc_client_data_relayed",
        "kpc_extension_data_delivered",
        "kpc_messages_dropped",
        "kpc_nats_connected",
        "kpc_nats_publish_batch_size",
        "kpc_nats_publish_latency_seconds",
        "kpc_token_validation_latency_seconds",
        "kpc_token_cache_hits",
        "kpc_token_cache_misses",
        "kpc_endpoints_online",
        "kpc_connectivity_events_queued",
        "kpc_license_expiry_remaining_seconds",
    }
    assert all(name.startswith("kpc_") for name in families)


def test_updates_show_up_in_render() -> None:
    metrics = Metrics()
    metrics.connections_open.labels(transport="tcp").inc()
    metrics.connect_refusals.labels(transport="tls", reason="NOT_AUTHORIZED").inc(2)
    metrics.received_bytes.labels(transport="tcp").inc(120)
    metrics.nats_publish_batch_size.observe(7)

    rendered = samples(metrics)

    assert rendered[("kpc_connections_open", (("transport", "tcp"),))] == 1
    assert rendered[
        ("kpc_connect_refusals_total", (("reason", "NOT_AUTHORIZED"), ("transport", "tls")))
    ] == 2
    assert rendered[("kpc_received_bytes_total", (("transport", "tcp"),))] == 120
    assert rendered[("kpc_nats_publish_batch_size_bucket", (("le", "10.0"),))] == 1
    assert rendered[("kpc_nats_publish_batch_size_bucket", (("le", "5.0"),))] == 0


def test_instances_do_not_share_state() -> None:
    first, second = Metrics(), Metrics()
    first.endpoints_online.set(5)

    assert samples(first)[("kpc_endpoints_online", ())] == 5
    assert samples(second)[("kpc_endpoints_online", ())] == 0


def test_license_expiry_is_nan_without_license_and_tracks_it_otherwise() -> None:
    metrics = Metrics()
    assert math.isnan(samples(metrics)[("kpc_license_expiry_remaining_seconds", ())])

    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30)
    metrics.track_license(LicenseInfo(subject="CN=x", not_after=expires))

    remaining = samples(metrics)[("kpc_license_expiry_remaining_seconds", ())]
    assert 29 * 86400 < remaining <= 30 * 86400
