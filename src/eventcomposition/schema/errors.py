"""Errors of the schema package."""

from collections.abc import Mapping, Sequence

from ..errors import EventCompositionError


class SchemaError(EventCompositionError):
    """The eventcomposition schema could not be applied or is not usable."""


class SchemaIncompatibleError(SchemaError):
    """Tables with the names eventcomposition owns exist but do not fit the library.

    ``problems`` maps each incompatible table to what is wrong with it.
    """

    def __init__(self, problems: Mapping[str, Sequence[str]]) -> None:
        self.problems: dict[str, tuple[str, ...]] = {
            table: tuple(found) for table, found in problems.items()
        }
        described = "; ".join(
            f"table '{table}' exists but is incompatible: {', '.join(found)}"
            for table, found in self.problems.items()
        )
        super().__init__(
            f"{described}; drop or migrate "
            f"{'it' if len(self.problems) == 1 else 'them'}, "
            "or point eventcomposition at another database"
        )

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(self.problems)


class SchemaMigrationError(SchemaError):
    """PostgreSQL refused a statement of the migration or could not be reached."""
