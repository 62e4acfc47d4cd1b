"""The reader's JSON decoder: orjson, with the standard library for the rest."""

import json

import pytest

from eventcomposition.consumers.decoding import fast_json_loads


@pytest.mark.parametrize(
    "text",
    [
        '{"order_id": "order-1", "amount_cents": 4977, "note": "caf\\u00e9"}',
        '[1, 2.5, -3e-7, true, false, null, "", {}]',
        '{"big": 123456789012345678901234567890}',  # beyond orjson's 64 bits
        '{"edge": 9223372036854775808, "small": -9223372036854775808}',
        '{"digits": 0.12345678901234567890123}',
        '{"nested": {"deep": [[[]]]}}',
    ],
)
def test_decodes_what_the_standard_library_decodes(text: str) -> None:
    assert fast_json_loads(text.encode()) == json.loads(text)


def test_refuses_what_is_not_json() -> None:
    with pytest.raises(ValueError, match=r"."):
        fast_json_loads(b"{not json")
