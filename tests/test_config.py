"""Settings: defaults, then the TOML file named by BERTH_CONFIG, then BERTH_* variables.

Every bad value must stop start-up with a ConfigError whose message names the setting.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import ConfigError, Settings, load_settings

MiB = 1024 * 1024


def _toml(tmp_path: Path, text: str, name: str = "berth.toml") -> dict[str, str]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return {"BERTH_CONFIG": str(path)}


# --------------------------------------------------------------------------- sources


def test_defaults() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.database_url == "sqlite:///var/berth.db"
    assert settings.storage_driver == "filesystem"
    assert settings.storage_root == "var/storage"
    assert settings.delete_enabled is True
    assert settings.upload_max_age == 24 * 3600
    assert settings.upload_purge_interval == 3600
    assert settings.max_manifest_size == 4 * MiB
    assert settings.log_level == "info"


def test_process_environment_is_not_read_when_environ_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [n for n in os.environ if n.startswith("BERTH_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("BERTH_LOG_LEVEL", "debug")
    assert load_settings({}).log_level == "info"
    assert load_settings().log_level == "debug"


def test_toml_file_via_berth_config(tmp_path: Path) -> None:
    environ = _toml(
        tmp_path,
        """
database_url = "postgresql://berth@db/berth"
storage_driver = "inmemory"
storage_root = "/srv/blobs"
delete_enabled = false
upload_max_age = "7d"
upload_purge_interval = 600
max_manifest_size = 8388608
log_level = "debug"
""",
    )
    settings = load_settings(environ)
    assert settings == Settings(
        database_url="postgresql://berth@db/berth",
        storage_driver="inmemory",
        storage_root="/srv/blobs",
        delete_enabled=False,
        upload_max_age=7 * 86400,
        upload_purge_interval=600,
        max_manifest_size=8 * MiB,
        log_level="debug",
    )


def test_toml_file_may_set_only_some_keys(tmp_path: Path) -> None:
    settings = load_settings(_toml(tmp_path, 'log_level = "warning"\n'))
    assert settings.log_level == "warning"
    assert settings.database_url == Settings().database_url
    assert settings.delete_enabled is True


def test_empty_berth_config_means_no_file() -> None:
    assert load_settings({"BERTH_CONFIG": ""}) == Settings()


def test_environment_variables_without_file() -> None:
    settings = load_settings(
        {
            "BERTH_DATABASE_URL": "postgresql+psycopg2://u:p@localhost:5432/berth",
            "BERTH_STORAGE_ROOT": "/data",
            "BERTH_DELETE_ENABLED": "no",
            "BERTH_UPLOAD_MAX_AGE": "30m",
        }
    )
    assert settings.database_url == "postgresql+psycopg2://u:p@localhost:5432/berth"
    assert settings.storage_root == "/data"
    assert settings.delete_enabled is False
    assert settings.upload_max_age == 1800


def test_environment_overrides_toml(tmp_path: Path) -> None:
    environ = _toml(
        tmp_path,
        'log_level = "debug"\ndelete_enabled = false\nstorage_root = "/from/toml"\n',
    )
    environ |= {"BERTH_DELETE_ENABLED": "true", "BERTH_LOG_LEVEL": "error"}
    settings = load_settings(environ)
    assert settings.delete_enabled is True
    assert settings.log_level == "error"
    assert settings.storage_root == "/from/toml"  # not overridden, TOML wins over default


def test_explicit_overrides_beat_environment() -> None:
    settings = load_settings({"BERTH_LOG_LEVEL": "error"}, overrides={"log_level": "debug"})
    assert settings.log_level == "debug"


def test_unknown_override_is_rejected() -> None:
    with pytest.raises(ConfigError, match="colour"):
        load_settings({}, overrides={"colour": "blue"})


# --------------------------------------------------------------------------- coercion


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("30m", 1800),
        ("24h", 86400),
        ("7d", 604800),
        ("3600", 3600),
        ("45s", 45),
        (" 2h ", 7200),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("1d12h", 129600),
        ("90000ms", 90),
    ],
)
def test_duration_from_environment(raw: str, seconds: int) -> None:
    assert load_settings({"BERTH_UPLOAD_MAX_AGE": raw}).upload_max_age == seconds
    assert load_settings({"BERTH_UPLOAD_PURGE_INTERVAL": raw}).upload_purge_interval == seconds


@pytest.mark.parametrize(("value", "seconds"), [('"30m"', 1800), ('"24h"', 86400), ("90", 90)])
def test_duration_from_toml(tmp_path: Path, value: str, seconds: int) -> None:
    settings = load_settings(_toml(tmp_path, f"upload_max_age = {value}\n"))
    assert settings.upload_max_age == seconds


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("false", False),
        ("1", True),
        ("0", False),
        ("yes", True),
        ("no", False),
        ("TRUE", True),
        ("False", False),
        ("on", True),
        ("off", False),
    ],
)
def test_boolean_from_environment(raw: str, expected: bool) -> None:
    assert load_settings({"BERTH_DELETE_ENABLED": raw}).delete_enabled is expected


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("false", False), ('"no"', False)])
def test_boolean_from_toml(tmp_path: Path, value: str, expected: bool) -> None:
    settings = load_settings(_toml(tmp_path, f"delete_enabled = {value}\n"))
    assert settings.delete_enabled is expected


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("raw", ["maybe", "", "2", "truthy", "y e s"])
def test_bad_boolean_names_the_setting(raw: str) -> None:
    with pytest.raises(ConfigError, match="delete_enabled") as info:
        load_settings({"BERTH_DELETE_ENABLED": raw})
    assert "boolean" in str(info.value)


@pytest.mark.parametrize(
    ("setting", "raw"),
    [
        ("upload_max_age", "soon"),
        ("upload_max_age", "10x"),
        ("upload_max_age", "1.5s"),  # a whole number of seconds is needed
        ("upload_max_age", "1h30"),
        ("upload_max_age", "-5"),
        ("upload_max_age", "h"),
        ("upload_max_age", ""),
        ("upload_purge_interval", "1w"),
        ("upload_purge_interval", "30 m"),
        ("max_manifest_size", "big"),
    ],
)
def test_bad_duration_names_the_setting(setting: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=setting):
        load_settings({f"BERTH_{setting.upper()}": raw})


@pytest.mark.parametrize("setting", ["upload_max_age", "upload_purge_interval"])
def test_zero_duration_names_the_setting(setting: str) -> None:
    with pytest.raises(ConfigError, match=f"{setting}: must be positive"):
        load_settings({f"BERTH_{setting.upper()}": "0"})


@pytest.mark.parametrize(
    ("line", "setting"),
    [
        ("delete_enabled = 2", "delete_enabled"),
        ('delete_enabled = "maybe"', "delete_enabled"),
        ("upload_max_age = 1.5", "upload_max_age"),
        ("upload_max_age = true", "upload_max_age"),
        ('upload_max_age = "forever"', "upload_max_age"),
        ("log_level = 3", "log_level"),
        ('storage_root = ["a", "b"]', "storage_root"),
    ],
)
def test_bad_toml_value_names_the_setting(tmp_path: Path, line: str, setting: str) -> None:
    with pytest.raises(ConfigError, match=setting):
        load_settings(_toml(tmp_path, line + "\n"))


@pytest.mark.parametrize("text", ["delete_enable = true\n", '[storage]\nroot = "/x"\n'])
def test_unknown_toml_key_names_the_key_and_file(tmp_path: Path, text: str) -> None:
    environ = _toml(tmp_path, text)
    key = text.split()[0].strip("[]")
    with pytest.raises(ConfigError) as info:
        load_settings(environ)
    message = str(info.value)
    assert repr(key) in message
    assert "unknown setting" in message
    assert environ["BERTH_CONFIG"] in message


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="BERTH_CONFIG") as info:
        load_settings({"BERTH_CONFIG": str(missing)})
    assert str(missing) in str(info.value)


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BERTH_CONFIG"):
        load_settings({"BERTH_CONFIG": str(tmp_path)})


@pytest.mark.parametrize(
    "text", ["delete_enabled = \n", "log_level = 'unterminated\n", "= 1\n", "a = 1\na = 2\n"]
)
def test_invalid_toml(tmp_path: Path, text: str) -> None:
    environ = _toml(tmp_path, text)
    with pytest.raises(ConfigError, match="BERTH_CONFIG") as info:
        load_settings(environ)
    assert "not valid TOML" in str(info.value)


def test_config_file_that_is_not_utf8_is_invalid_toml(tmp_path: Path) -> None:
    # TOML must be UTF-8; a Latin-1 file (or a binary one) is a config error, not a crash.
    path = tmp_path / "berth.toml"
    path.write_bytes('log_level = "d\xe9bug"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="BERTH_CONFIG"):
        load_settings({"BERTH_CONFIG": str(path)})


@pytest.mark.parametrize(
    "url", ["mysql://root@db/berth", "postgres://db/berth", "berth.db", "", "sqlite:/x.db"]
)
def test_database_url_must_be_sqlite_or_postgresql(url: str) -> None:
    with pytest.raises(ConfigError, match="database_url"):
        load_settings({"BERTH_DATABASE_URL": url})


@pytest.mark.parametrize(
    "url",
    ["sqlite:///var/berth.db", "sqlite://", "postgresql://db/b", "postgresql+psycopg2://db/b"],
)
def test_database_url_accepted(url: str) -> None:
    assert load_settings({"BERTH_DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize("name", ["gcs", "S3", "FILESYSTEM", "", "azure"])
def test_unknown_storage_driver(name: str) -> None:
    with pytest.raises(ConfigError, match="storage_driver"):
        load_settings({"BERTH_STORAGE_DRIVER": name})


def test_filesystem_driver_needs_a_root() -> None:
    with pytest.raises(ConfigError, match="storage_root"):
        load_settings({"BERTH_STORAGE_ROOT": ""})
    # The in-memory driver has no root to need.
    assert load_settings({"BERTH_STORAGE_ROOT": "", "BERTH_STORAGE_DRIVER": "inmemory"})


@pytest.mark.parametrize("size", [str(4 * MiB - 1), "1000", "1"])
def test_max_manifest_size_below_4_mib(size: str) -> None:
    with pytest.raises(ConfigError, match="max_manifest_size") as info:
        load_settings({"BERTH_MAX_MANIFEST_SIZE": size})
    assert "4 MiB" in str(info.value)


def test_max_manifest_size_at_or_above_4_mib() -> None:
    assert load_settings({"BERTH_MAX_MANIFEST_SIZE": str(4 * MiB)}).max_manifest_size == 4 * MiB
    assert load_settings({"BERTH_MAX_MANIFEST_SIZE": str(16 * MiB)}).max_manifest_size == 16 * MiB


def test_error_from_toml_is_reported_even_if_env_would_fix_it(tmp_path: Path) -> None:
    # A broken file is broken: it is not silently masked by the environment.
    environ = _toml(tmp_path, 'delete_enabled = "maybe"\n') | {"BERTH_DELETE_ENABLED": "true"}
    with pytest.raises(ConfigError, match="delete_enabled"):
        load_settings(environ)


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        load_settings({"BERTH_DELETE_ENABLED": "maybe"})


# --------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"BERTH_DELETE_ENABLED": "maybe"}, "delete_enabled"),
        ({"BERTH_DATABASE_URL": "mysql://db/berth"}, "database_url"),
        ({"BERTH_CONFIG": "missing.toml"}, "BERTH_CONFIG"),
        ({"BERTH_CONFIG": "latin1.toml"}, "BERTH_CONFIG"),
    ],
    ids=["bad-bool", "bad-database-url", "missing-file", "non-utf8-file"],
)
def test_berth_serve_with_bad_setting_exits_with_one_clear_line(
    tmp_path: Path, env: dict[str, str], setting: str
) -> None:
    (tmp_path / "latin1.toml").write_bytes(b'log_level = "d\xe9bug"\n')
    berth = Path(sys.executable).parent / "berth"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")} | env
    result = subprocess.run(
        [str(berth), "serve", "--bind", "127.0.0.1:0"],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert setting in lines[0]
    # It stopped before touching anything: no database, no storage directory.
    assert not (tmp_path / "var").exists()


@pytest.mark.parametrize(("raw", "size"), [("4m", 4 * MiB), ("8MiB", 8 * MiB), ("1g", 1024 * MiB)])
def test_sizes_take_units(raw: str, size: int) -> None:
    assert load_settings({"BERTH_MAX_MANIFEST_SIZE": raw}).max_manifest_size == size


@pytest.mark.parametrize("raw", ["loud", "", "verbose"])
def test_bad_log_level_names_the_setting(raw: str) -> None:
    with pytest.raises(ConfigError, match="log_level"):
        load_settings({"BERTH_LOG_LEVEL": raw})


def test_overrides_are_checked_like_environment_values() -> None:
    with pytest.raises(ConfigError, match="delete_enabled"):
        load_settings({}, overrides={"delete_enabled": "maybe"})


def test_one_duration_grammar_for_every_duration_setting(tmp_path: Path) -> None:
    # Go's syntax plus days, the same for top-level settings and webhook endpoint keys.
    settings = load_settings(
        _toml(
            tmp_path,
            'gc_grace = "1h30m"\nauth_token_ttl = "2m"\nnotifications_retention = "1d"\n',
        )
    )
    assert (settings.gc_grace, settings.auth_token_ttl) == (5400, 120)
    assert settings.notifications_retention == 86400


def test_counts_are_plain_numbers() -> None:
    assert load_settings({"BERTH_THREADS": "4"}).threads == 4
    with pytest.raises(ConfigError, match="threads"):
        load_settings({"BERTH_THREADS": "4m"})
    with pytest.raises(ConfigError, match="auth_max_failures"):
        load_settings({"BERTH_AUTH_MAX_FAILURES": "²"})


def test_settings_once_read_from_the_environment_are_settings(tmp_path: Path) -> None:
    settings = load_settings(
        _toml(tmp_path, 'forwarded_allow_ips = "10.0.0.1, 10.0.0.2"\nworker_class = "sync"\n')
    )
    assert settings.trusted_proxies() == {"10.0.0.1", "10.0.0.2"}
    assert settings.worker_class == "sync"
    assert load_settings({}).trusted_proxies() == set()  # no proxy is believed unless named
