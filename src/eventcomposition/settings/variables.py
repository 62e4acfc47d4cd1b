"""The names of the environment variables that set or steer the settings.

Every setting has one: ``EVENTCOMPOSITION_`` then its dotted key, upper case, with
``__`` between the parts (``storage.postgres.password`` is
``EVENTCOMPOSITION_STORAGE__POSTGRES__PASSWORD``). The package also reads a few
variables of its own, which are not settings.
"""

ENV_PREFIX = "EVENTCOMPOSITION_"
ENV_NESTED_DELIMITER = "__"


def environment_variable(key: str) -> str:
    """The environment variable of a dotted settings key."""
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(
        part.upper() for part in key.split(".")
    )


ENVIRONMENT_VARIABLE = ENV_PREFIX + "ENV"
SETTINGS_DIR_VARIABLE = ENV_PREFIX + "SETTINGS_DIR"
PASSWORD_VARIABLE = environment_variable("storage.postgres.password")

# Variables of the package that are not settings: the environment and settings
# folder choosers, and those of the test support and the development scripts.
PACKAGE_VARIABLES = frozenset(
    ENV_PREFIX + name
    for name in (
        "ENV",
        "SETTINGS_DIR",
        "TEST_DATABASE_URL",  # testing.postgres: a server for the test suite
        "TEST_POSTGRES_BINDIR",  # testing.postgres: where initdb and postgres are
        "PYTHON",  # scripts/bootstrap: the interpreter to use
        "LOCAL_PG_PORT",  # scripts/local-postgres: its port
    )
)
