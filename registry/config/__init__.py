"""Configuration: TOML parsed once into frozen dataclasses.

Every key has a default (documented in config.example.toml); unknown keys and bad values fail at start with a
message that names the key. Command-line flags override the file. Secrets are wrapped so that `repr` and logs
never show them. The parts: `values` (the error, secrets, the parsers and checks of single values), `schema` (the
sections as dataclasses, each key's kind, check and default), `loading` (file, environment and overrides layered,
coerced and checked across keys), `environment` (the `MOORAGE_*` variables) and `render` (the configuration as
TOML).
"""

from registry.config.environment import ENV_PREFIX, environment_variables, from_environ
from registry.config.loading import from_dict, load
from registry.config.render import render
from registry.config.schema import (
    AUTO_WORKERS_MAX,
    AuthConfig,
    Config,
    ConsoleConfig,
    GcConfig,
    LifecycleConfig,
    LogConfig,
    MetricsConfig,
    PrincipalConfig,
    PullThroughConfig,
    RegistryConfig,
    RuleConfig,
    SecretConfig,
    ServerConfig,
    SigningConfig,
    StorageConfig,
)
from registry.config.values import (
    ConfigError,
    Secret,
    parse_duration,
    parse_free_space,
    parse_listen,
    split_hostname,
)

__all__ = [
    "AUTO_WORKERS_MAX",
    "ENV_PREFIX",
    "AuthConfig",
    "Config",
    "ConfigError",
    "ConsoleConfig",
    "GcConfig",
    "LifecycleConfig",
    "LogConfig",
    "MetricsConfig",
    "PrincipalConfig",
    "PullThroughConfig",
    "RegistryConfig",
    "RuleConfig",
    "Secret",
    "SecretConfig",
    "ServerConfig",
    "SigningConfig",
    "StorageConfig",
    "environment_variables",
    "from_dict",
    "from_environ",
    "load",
    "parse_duration",
    "parse_free_space",
    "parse_listen",
    "render",
    "split_hostname",
]
