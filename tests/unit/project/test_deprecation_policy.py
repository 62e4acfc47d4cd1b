"""DeprecationWarnings raised from eventcomposition's own calls fail the test run.

logicblocks 0.1.11 still accepts its old call forms (``callable=``, bare callables)
with a DeprecationWarning; pytest's configuration turns such a warning into an error
when it is attributed to an ``eventcomposition`` module, so our code paths cannot
drift onto them unnoticed.
"""

import warnings

import pytest
from logicblocks.event.processing import PollingService


async def _nothing() -> None:
    return None


def test_a_deprecation_attributed_to_eventcomposition_is_an_error() -> None:
    with pytest.raises(DeprecationWarning, match="old call form"):
        warnings.warn_explicit(
            "old call form",
            DeprecationWarning,
            filename="runtime.py",
            lineno=1,
            module="eventcomposition.runtime.consumer_service",
        )


def test_logicblocks_attributes_its_deprecations_to_the_caller() -> None:
    # stacklevel=2: the warning names the calling module, so the rule above
    # catches calls made from eventcomposition (here the caller is this test).
    with pytest.warns(DeprecationWarning, match="instead of .callable.") as caught:
        PollingService(callable=_nothing)

    assert caught[0].filename == __file__
