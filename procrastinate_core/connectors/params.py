"""Connection parameters, shared by every connector: libpq keywords, DSNs, and what to reject.

Parameters come three ways (libpq environment variables, a conninfo/DSN, or
keyword arguments); a libpq keyword given at the top level of a connector
(`SyncPsycopgConnector(host="db")`) is a connection parameter, and anything
that is neither a libpq keyword nor an argument of the underlying pool is a
TypeError naming it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

LIBPQ_KEYWORDS = frozenset(
    """
    application_name channel_binding client_encoding connect_timeout dbname
    fallback_application_name gssdelegation gssencmode gsslib host hostaddr keepalives
    keepalives_count keepalives_idle keepalives_interval krbsrvname load_balance_hosts
    max_protocol_version min_protocol_version options passfile password port
    replication require_auth requirepeer service ssl_max_protocol_version
    ssl_min_protocol_version sslcert sslcertmode sslcompression sslcrl sslcrldir sslkey
    sslkeylogfile sslmode sslnegotiation sslpassword sslrootcert sslsni
    target_session_attrs tcp_user_timeout user
    """.split()
)

DEFAULT_APPLICATION_NAME = "procrastinate_core"

# postgresql://, postgres://, and SQLAlchemy's postgresql+psycopg2:// (any driver suffix).
_URL = re.compile(r"^postgres(?:ql)?(?:\+\w+)?://")


def split_arguments(
    connector: str,
    arguments: Mapping[str, Any],
    accepted: Iterable[str],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a connector's **kwargs into (libpq connection parameters, other accepted ones).

    Raises TypeError naming every argument that is neither.
    """
    accepted = set(accepted)
    connection: dict[str, Any] = {}
    others: dict[str, Any] = {}
    unknown = []
    for key, value in arguments.items():
        if key in accepted:
            others[key] = value
        elif key in LIBPQ_KEYWORDS:
            connection[key] = value
        else:
            unknown.append(key)
    if unknown:
        names = ", ".join(repr(k) for k in sorted(unknown))
        raise TypeError(
            f"{connector}() got unexpected argument(s) {names}: not a libpq connection "
            f"parameter and not an argument of the underlying pool. Accepted: "
            f"{', '.join(sorted(accepted))}, or any libpq keyword (host, port, dbname, "
            "user, password, sslmode, ...)."
        )
    return connection, others


def parse_dsn(dsn: str) -> dict[str, str]:
    """The keywords of a conninfo string or a postgresql:// URI (for messages and counterparts)."""
    dsn = dsn.strip()
    if not dsn:
        return {}
    if _URL.match(dsn):
        url = urlsplit(dsn)
        found: dict[str, str] = {}
        if url.hostname:
            found["host"] = unquote(url.hostname)
        if url.port:
            found["port"] = str(url.port)
        if url.username:
            found["user"] = unquote(url.username)
        if url.password:
            found["password"] = unquote(url.password)
        if url.path and url.path != "/":
            found["dbname"] = unquote(url.path.lstrip("/"))
        found.update(parse_qsl(url.query))
        return found
    found = {}
    for item in _split_conninfo(dsn):
        key, _, value = item.partition("=")
        found[key.strip()] = value.strip()
    return found


def _split_conninfo(dsn: str) -> list[str]:
    items, current, quoted, escaped = [], [], False, False
    text = dsn.replace(" = ", "=")
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "'":
            quoted = not quoted
        elif char.isspace() and not quoted:
            if current:
                items.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        items.append("".join(current))
    return items
