"""Errors of the schema package."""

from collections.abc import Mapping, Sequence

from ..errors import EventCompositionError


class SchemaError(EventCompositionError):
    """The eventcomposition schema could not be applied or is not usable."""


class SchemaIncompatibleError(SchemaError):
    """Objects with the names eventcomposition owns exist but do not fit the library.

    ``problems`` maps each incompatible table to what is wrong with it;
    ``other_problems`` does the same for other objects (the NOTIFY trigger and its
    function), keyed by a description such as ``trigger 'x' on table 'events'``.
    """

    def __init__(
        self,
        problems: Mapping[str, Sequence[str]],
        *,
        other_problems: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.problems: dict[str, tuple[str, ...]] = {
            table: tuple(found) for table, found in problems.items()
        }
        self.other_problems: dict[str, tuple[str, ...]] = {
            name: tuple(found) for name, found in (other_problems or {}).items()
        }
        described = "; ".join(
            f"{name} exists but is incompatible: {', '.join(found)}"
            for name, found in [
                *(
                    (f"table '{table}'", found)
                    for table, found in self.problems.items()
                ),
                *self.other_problems.items(),
            ]
        )
        count = len(self.problems) + len(self.other_problems)
        super().__init__(
            f"{described}; drop or migrate {'it' if count == 1 else 'them'}, "
            "or point eventcomposition at another database"
        )

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(self.problems)


class SchemaMigrationError(SchemaError):
    """PostgreSQL refused a statement of the migration or could not be reached."""
