"""The real Kafka broker and PostgreSQL server of the integration tests, for crash tests."""

from tests.integration.conftest import kafka_bootstrap, postgres_dsn

__all__ = ["kafka_bootstrap", "postgres_dsn"]
