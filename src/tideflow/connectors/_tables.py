"""Settings checks shared by the table sinks (SQLite, PostgreSQL)."""

from __future__ import annotations

from collections.abc import Sequence

from tideflow._errors import ConfigError

__all__ = ["check_table_settings"]


def check_table_settings(
    step_id: str, *, mode: str, modes: Sequence[str], key: Sequence[str] | None, table: object
) -> None:
    """Raise :class:`ConfigError` for an unknown mode, an upsert without key, or a bad table.

    Examples
    --------
    >>> check_table_settings("s", mode="upsert", modes=["append", "upsert"], key=None, table="t")
    Traceback (most recent call last):
    ...
    tideflow._errors.ConfigError: step 's': mode='upsert' needs key=<column or columns>
    """
    if mode not in modes:
        msg = f"step {step_id!r}: unknown mode={mode!r}; use one of {list(modes)}"
        raise ConfigError(msg)
    if mode == "upsert" and not key:
        msg = f"step {step_id!r}: mode='upsert' needs key=<column or columns>"
        raise ConfigError(msg)
    if not isinstance(table, str) or not table or "\x00" in table:
        msg = f"step {step_id!r}: table must be a non-empty name, got {table!r}"
        raise ConfigError(msg)
