"""NodeMetrics: what consumers and coordinators record, in the node's own registry."""

from logicblocks.event.types import CategoryIdentifier, LogIdentifier, StreamIdentifier
from prometheus_client import REGISTRY
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from eventcomposition.lag import SourceLag
from eventcomposition.metrics import NodeMetrics, PrometheusNodeMetrics, source_label

ORDERS = CategoryIdentifier(category="orders")


def samples(
    metrics: PrometheusNodeMetrics,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_sources_have_short_stable_labels() -> None:
    assert source_label(LogIdentifier()) == "log"
    assert source_label(ORDERS) == "category:orders"
    assert source_label(StreamIdentifier(category="orders", stream="o-1")) == (
        "stream:orders/o-1"
    )


def test_batches_errors_dead_letters_and_allocations_are_counted() -> None:
    metrics = PrometheusNodeMetrics()

    metrics.batch_processed("totals", ORDERS, 500, 0.02)
    metrics.batch_processed("totals", ORDERS, 20, 0.004)
    metrics.consumer_failed("totals", ORDERS)
    metrics.dead_lettered("totals")
    metrics.dead_lettered("totals", 2)
    metrics.allocation_changed(3)
    metrics.leadership_changed(True)

    seen = samples(metrics)
    labels = (("group", "totals"), ("source", "category:orders"))
    assert seen[("eventcomposition_events_processed_total", labels)] == 520
    assert seen[("eventcomposition_consumer_errors_total", labels)] == 1
    assert seen[("eventcomposition_dead_letters_total", (("group", "totals"),))] == 3
    assert seen[("eventcomposition_allocation_changes_total", ())] == 3
    assert seen[("eventcomposition_coordinator_leader", ())] == 1
    assert seen[("eventcomposition_batch_duration_seconds_count", ())] == 2
    assert (
        seen[("eventcomposition_batch_duration_seconds_bucket", (("le", "0.005"),))]
        == 1
    )

    metrics.leadership_changed(False)
    assert samples(metrics)[("eventcomposition_coordinator_leader", ())] == 0


def test_holdings_replace_the_lag_and_held_gauges() -> None:
    metrics = PrometheusNodeMetrics()
    other = StreamIdentifier(category="orders", stream="o-1")
    metrics.holdings_observed(
        [
            SourceLag("totals", ORDERS, checkpoint=10, head=25),
            SourceLag("totals", other, checkpoint=None, head=3),
            SourceLag("audit", ORDERS, checkpoint=25, head=25),
        ]
    )
    seen = samples(metrics)
    assert (
        seen[
            (
                "eventcomposition_consumer_lag_events",
                (("group", "totals"), ("source", "category:orders")),
            )
        ]
        == 15
    )
    assert (
        seen[
            (
                "eventcomposition_consumer_lag_events",
                (("group", "totals"), ("source", "stream:orders/o-1")),
            )
        ]
        == 4
    )
    assert seen[("eventcomposition_sources_held", (("group", "totals"),))] == 2
    assert seen[("eventcomposition_sources_held", (("group", "audit"),))] == 1

    metrics.holdings_observed([SourceLag("audit", ORDERS, checkpoint=25, head=30)])
    seen = samples(metrics)
    lag_series = [
        key for key in seen if key[0] == "eventcomposition_consumer_lag_events"
    ]
    assert lag_series == [
        (
            "eventcomposition_consumer_lag_events",
            (("group", "audit"), ("source", "category:orders")),
        )
    ]
    assert ("eventcomposition_sources_held", (("group", "totals"),)) not in seen


def test_each_node_has_its_own_registry_and_never_the_global_one() -> None:
    first, second = PrometheusNodeMetrics(), PrometheusNodeMetrics()
    first.dead_lettered("totals")

    assert first.registry is not second.registry
    assert (
        "eventcomposition_dead_letters_total",
        (("group", "totals"),),
    ) not in samples(second)
    assert (
        REGISTRY.get_sample_value(
            "eventcomposition_dead_letters_total", {"group": "totals"}
        )
        is None
    )


def test_metrics_off_records_nothing_and_accepts_every_call() -> None:
    metrics = NodeMetrics()

    metrics.batch_processed("totals", ORDERS, 500, 0.02)
    metrics.consumer_failed("totals", ORDERS)
    metrics.dead_lettered("totals")
    metrics.allocation_changed()
    metrics.leadership_changed(True)
    metrics.holdings_observed([])

    assert not hasattr(metrics, "registry")


def test_per_event_consumers_count_each_event_and_time_it() -> None:
    metrics = PrometheusNodeMetrics()

    metrics.event_processed("projection", ORDERS, 0.002)
    metrics.event_processed("projection", ORDERS, 0.004)

    found = samples(metrics)
    processed = (
        "eventcomposition_events_processed_total",
        (("group", "projection"), ("source", "category:orders")),
    )
    assert found[processed] == 2
    assert found[("eventcomposition_event_duration_seconds_count", ())] == 2


def test_a_lag_not_known_is_absent_never_zero_or_stale() -> None:
    metrics = PrometheusNodeMetrics()
    payments = CategoryIdentifier(category="payments")
    lag = (
        "eventcomposition_consumer_lag_events",
        (("group", "totals"), ("source", "category:orders")),
    )
    unknown_lag = (
        "eventcomposition_consumer_lag_events",
        (("group", "totals"), ("source", "category:payments")),
    )
    metrics.holdings_observed(
        [
            SourceLag("totals", ORDERS, checkpoint=3, head=9),
            SourceLag("totals", payments, checkpoint=3, head=None, head_known=False),
        ]
    )
    found = samples(metrics)
    assert found[lag] == 6
    assert unknown_lag not in found
    assert found[("eventcomposition_sources_held", (("group", "totals"),))] == 2

    # The lag could not be read: the last one read is not shown as current; what
    # is held is known without the database.
    metrics.holdings_unknown([("totals", ORDERS)], ["totals", "idle"])
    found = samples(metrics)
    assert lag not in found
    assert found[("eventcomposition_sources_held", (("group", "totals"),))] == 1
    assert found[("eventcomposition_sources_held", (("group", "idle"),))] == 0


def test_a_group_holding_nothing_shows_zero_sources_held() -> None:
    metrics = PrometheusNodeMetrics()

    metrics.holdings_observed([SourceLag("totals", ORDERS, 1, 1)], ["totals", "idle"])
    found = samples(metrics)
    assert found[("eventcomposition_sources_held", (("group", "idle"),))] == 0
    assert found[("eventcomposition_sources_held", (("group", "totals"),))] == 1

    # A source handed away drops its series.
    metrics.holdings_observed([], ["totals", "idle"])
    found = samples(metrics)
    assert found[("eventcomposition_sources_held", (("group", "totals"),))] == 0
    assert not any(name == "eventcomposition_consumer_lag_events" for name, _ in found)
