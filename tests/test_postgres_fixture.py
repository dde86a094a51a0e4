"""The postgres_server fixture gives a real PostgreSQL that Vault's database engine can manage."""

from __future__ import annotations

import secrets

import pytest

pytestmark = pytest.mark.postgres


def test_admin_can_connect_and_is_superuser(postgres_server) -> None:
    with postgres_server.connect() as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        user, is_super = conn.execute(
            "select current_user, rolsuper from pg_roles where rolname = current_user"
        ).fetchone()
    assert user == "vaultadmin"
    assert is_super is True


def test_listens_on_loopback_tcp_only(postgres_server) -> None:
    assert postgres_server.host == "127.0.0.1"
    with postgres_server.connect() as conn:
        addrs = conn.execute("show listen_addresses").fetchone()[0]
        fsync = conn.execute("show fsync").fetchone()[0]
        sock = conn.execute("show unix_socket_directories").fetchone()[0]
    assert addrs == "127.0.0.1"
    assert fsync == "off"
    assert sock == str(postgres_server.socket_dir)


def test_wrong_password_is_refused(postgres_server) -> None:
    import psycopg

    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        postgres_server.connect(password="not-" + postgres_server.admin_password).close()


def test_roles_created_like_vault_does_can_log_in(postgres_server) -> None:
    """What the database secrets engine does: create a login role with a password and expiry, then use it."""
    name, password = f"v-test-{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    with postgres_server.connect() as admin:
        admin.execute(
            f"CREATE ROLE \"{name}\" WITH LOGIN PASSWORD '{password}' VALID UNTIL 'infinity'"
        )
        try:
            with postgres_server.connect(name, password) as conn:
                assert conn.execute("select current_user").fetchone() == (name,)
        finally:
            admin.execute(f'DROP ROLE "{name}"')
