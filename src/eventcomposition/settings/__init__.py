"""The settings of an eventcomposition node: typed models and their layered sources.

The only module that imports pydantic-settings. Everything else receives the
validated :class:`EventCompositionSettings` (or one of its sections).
"""

from eventcomposition.settings.loading import (
    DEFAULT_ENVIRONMENT,
    ENVIRONMENT_VARIABLE,
    SETTINGS_DIR_VARIABLE,
    SettingsError,
    SettingSource,
    load_settings,
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

__all__ = [
    "DEFAULT_ENVIRONMENT",
    "ENVIRONMENT_VARIABLE",
    "SETTINGS_DIR_VARIABLE",
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
    "generate_node_id",
    "load_settings",
    "settings_with_sources",
]
