"""What a notification's payload means to the listener."""

import pytest

from eventcomposition.services.notify import categories_in


def test_a_json_array_names_its_categories() -> None:
    assert categories_in('["orders", "pay\\"ments"]') == frozenset(
        {"orders", 'pay"ments'}
    )


@pytest.mark.parametrize(
    "payload", ["*", "", "not json", '{"orders": 1}', '["orders", 3]', '"orders"']
)
def test_the_wildcard_or_an_unknown_payload_means_every_category(
    payload: str,
) -> None:
    assert categories_in(payload) is None
