"""librdkafka settings for the Kafka connectors: user config, ``TIDEFLOW_KAFKA_*`` and masking."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

from tideflow._errors import ConfigError, ConnectorError

__all__ = [
    "ENV_PREFIX",
    "check_topic",
    "client_config",
    "masked",
]

logger = logging.getLogger(__name__)

#: Environment variables ``TIDEFLOW_KAFKA_SASL_PASSWORD=...`` become ``sasl.password`` and so on
#: (lower-cased, ``_`` -> ``.``); explicit ``config=`` entries win over the environment.
ENV_PREFIX = "TIDEFLOW_KAFKA_"

_SECRET = re.compile(r"(password|secret|token|credential|\.pem$|jaas|key$)", re.IGNORECASE)
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def masked(config: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``config`` with secret values replaced, safe to log or show in errors.

    Examples
    --------
    >>> masked({"sasl.username": "svc", "sasl.password": "hunter2", "ssl.key.pem": "..."})
    {'sasl.username': 'svc', 'sasl.password': '***', 'ssl.key.pem': '***'}
    """
    return {k: ("***" if _SECRET.search(k) else v) for k, v in config.items()}


def env_config(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """librdkafka settings from ``TIDEFLOW_KAFKA_*`` environment variables.

    Examples
    --------
    >>> env_config({"TIDEFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "HOME": "/root"})
    {'security.protocol': 'SASL_SSL'}
    """
    env = os.environ if environ is None else environ
    out: dict[str, str] = {}
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            key = name[len(ENV_PREFIX) :].lower().replace("_", ".")
            if key == "bootstrap":  # TIDEFLOW_KAFKA_BOOTSTRAP: the examples' --bootstrap default
                continue
            out[key] = value
    return out


def client_config(
    step_id: str,
    bootstrap: str,
    defaults: Mapping[str, Any],
    user: Mapping[str, Any] | None,
    forced: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge settings: ``defaults`` < environment < ``user`` config < ``forced``."""
    conf: dict[str, Any] = dict(defaults)
    conf.update(env_config())
    conf.update(dict(user or {}))
    if bootstrap:
        conf["bootstrap.servers"] = bootstrap
    if not conf.get("bootstrap.servers"):
        msg = (
            f"step {step_id!r}: no Kafka bootstrap address; pass bootstrap='host:port' "
            "(or set TIDEFLOW_KAFKA_BOOTSTRAP_SERVERS)"
        )
        raise ConfigError(msg)
    for key, value in (forced or {}).items():
        if key in (user or {}) and (user or {})[key] != value:
            msg = (
                f"step {step_id!r}: Kafka setting {key}={(user or {})[key]!r} is not allowed here: "
                f"tideflow needs {key}={value!r} (it tracks offsets itself); remove it from config"
            )
            raise ConfigError(msg)
        conf[key] = value
    conf.setdefault("client.id", f"tideflow-{step_id}")
    return conf


def check_topic(step_id: str, topic: object) -> str:
    """Return ``topic`` if it is a valid Kafka topic name, else raise :class:`ConfigError`."""
    if not isinstance(topic, str) or not _TOPIC.match(topic) or topic in (".", ".."):
        msg = (
            f"step {step_id!r}: {topic!r} is not a valid Kafka topic name (1-249 characters "
            "from A-Z a-z 0-9 . _ -)"
        )
        raise ConfigError(msg)
    return topic


def connector_error(
    step_id: str, what: str, exc: BaseException, conf: Mapping[str, Any]
) -> ConnectorError:
    """A :class:`ConnectorError` for a failed Kafka call, naming the broker (never secrets)."""
    servers = conf.get("bootstrap.servers", "?")
    return ConnectorError(f"step {step_id!r}: {what} (bootstrap {servers}): {exc}")


def log_config(step_id: str, role: str, conf: Mapping[str, Any]) -> None:
    """Log the effective settings at debug level, secrets masked."""
    shown = {k: v for k, v in masked(conf).items() if not callable(v)}
    logger.debug("step %r: kafka %s settings %s", step_id, role, shown)
