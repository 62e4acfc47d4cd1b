"""The settings of an eventcomposition node: typed models and their layered sources.

The only module that imports pydantic-settings. Everything else receives the
validated :class:`EventCompositionSettings` (or one of its sections).
"""

from eventcomposition.settings.loading import (
    DEFAULT_ENVIRONMENT,
    SHIPPED_PROFILES_DIR,
    SettingsError,
    SettingSource,
    load_settings,
    settings_files,
    settings_with_sources,
)
from eventcomposition.settings.models import (
    BrokerSettings,
    BrokerType,
    ConsumerSettings,
    EventCompositionSettings,
    LogFormat,
    LoggingSettings,
    LogLevel,
    NodeSettings,
    PostgresSettings,
    StorageSettings,
    StorageType,
    generate_node_id,
)
from eventcomposition.settings.variables import (
    ENV_PREFIX,
    ENVIRONMENT_VARIABLE,
    PACKAGE_VARIABLES,
    PASSWORD_VARIABLE,
    SETTINGS_DIR_VARIABLE,
    environment_variable,
)

__all__ = [
    "DEFAULT_ENVIRONMENT",
    "ENVIRONMENT_VARIABLE",
    "ENV_PREFIX",
    "PACKAGE_VARIABLES",
    "PASSWORD_VARIABLE",
    "SETTINGS_DIR_VARIABLE",
    "SHIPPED_PROFILES_DIR",
    "BrokerSettings",
    "BrokerType",
    "ConsumerSettings",
    "EventCompositionSettings",
    "LogFormat",
    "LogLevel",
    "LoggingSettings",
    "NodeSettings",
    "PostgresSettings",
    "SettingSource",
    "SettingsError",
    "StorageSettings",
    "StorageType",
    "environment_variable",
    "generate_node_id",
    "load_settings",
    "settings_files",
    "settings_with_sources",
]
