"""Principal passwords live in a file only its owner can read, and are refused otherwise."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from symphony.db import ConfigurationError, DatabaseSettings, Principal
from symphony.db.credential import CredentialStore


def test_bootstrapped_credentials_file_is_owner_only(db_settings: DatabaseSettings) -> None:
    path = db_settings.credentials_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_uid == os.getuid()


def test_store_round_trips_and_writes_mode_0600(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "nested" / "credentials.json")
    passwords = {p: f"pw-{p.name}" for p in Principal}
    store.save("server-a", passwords)
    store.save("server-b", {Principal.INGEST: "other"})
    assert store.load("server-a") == passwords
    assert store.load("server-b") == {Principal.INGEST: "other"}
    assert store.load("unknown") == {}
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_readable_by_others_is_refused(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "credentials.json")
    store.save("server", {Principal.READER: "secret"})
    store.path.chmod(0o644)
    with pytest.raises(ConfigurationError) as info:
        store.load("server")
    assert info.value.code == "CREDENTIALS_FILE_EXPOSED"
    assert "secret" not in str(info.value)


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    path.write_text("{not json")
    path.chmod(0o600)
    with pytest.raises(ConfigurationError) as info:
        CredentialStore(path).load("server")
    assert info.value.code == "CREDENTIALS_FILE_INVALID"
