"""Settings: defaults, then a TOML file, then EXCHANGE_* variables, each checked with a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest

from exchange import config
from exchange.errors import ConfigError


def test_defaults_need_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = config.load(environ={})
    assert settings.listen == "127.0.0.1:7443"
    assert settings.effective_database_url == "sqlite:///var/hub/exchange.db"
    assert not settings.insecure_dev


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    file = tmp_path / "hub.toml"
    file.write_text('listen = "0.0.0.0:9443"\nhostnames = ["hub.example.gov.cn", "10.0.0.5"]\nlog_level = "DEBUG"\n')
    env = {"EXCHANGE_LISTEN": "127.0.0.1:9000", "EXCHANGE_INSECURE_DEV": "yes", "EXCHANGE_HOSTNAMES": "a, b"}
    settings = config.load(file, environ=env, overrides={"listen": "127.0.0.1:9100", "home": None})
    assert settings.listen == "127.0.0.1:9100"
    assert settings.insecure_dev is True
    assert settings.hostnames == ("a", "b")
    assert settings.log_level == "DEBUG"
    assert settings.sources == ("defaults", f"file {file}", "environment", "command line")


def test_config_file_named_by_environment(tmp_path: Path) -> None:
    file = tmp_path / "other.toml"
    file.write_text('database_url = "postgresql+psycopg://db/exchange"\n')
    settings = config.load(environ={"EXCHANGE_CONFIG": str(file)})
    assert settings.effective_database_url == "postgresql+psycopg://db/exchange"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EXCHANGE_LISTEN": "7443"}, "listen must be host:port"),
        ({"EXCHANGE_MAX_MESSAGE_BYTES": "lots"}, "'lots' is not valid"),
        ({"EXCHANGE_MAX_MESSAGE_BYTES": "10"}, "max_message_bytes must be between"),
        ({"EXCHANGE_INSECURE_DEV": "maybe"}, "expected true or false"),
        ({"EXCHANGE_LOG_LEVEL": "LOUD"}, "log_level must be one of"),
        ({"EXCHANGE_DATABASE_URL": "mysql://x/y"}, "database_url must be a sqlite: or postgresql URL"),
        ({"EXCHANGE_LISTNE": "x"}, "unknown setting EXCHANGE_LISTNE"),
        ({"EXCHANGE_CERTIFICATE_DAYS": "0"}, "certificate_days must be between 1 and 825 days"),
        ({"EXCHANGE_TRACING": "jaeger"}, "tracing must be off or otlp"),
        ({"EXCHANGE_TRACING": "otlp", "EXCHANGE_TRACING_ENDPOINT": "collector:4317"}, "tracing_endpoint must be http"),
        ({"EXCHANGE_TRACING_SAMPLE_RATIO": "1.5"}, "tracing_sample_ratio must be between 0 and 1"),
        ({"EXCHANGE_HUB_CODE": "3502"}, "hub_code must be a six-digit administrative division code"),
        ({"EXCHANGE_HUB_LEVEL": "village"}, "hub_level must be one of county, city, province, national"),
        ({"EXCHANGE_FEDERATION_LISTEN": "127.0.0.1:7445"}, "federation_listen needs hub_code, hub_name and hub_level"),
        ({"EXCHANGE_FEDERATION_SYNC_SECONDS": "0"}, "federation_sync_seconds must be between"),
    ],
)
def test_bad_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.load(environ=env)


def test_a_federating_hub_may_run_several_workers() -> None:
    env = {
        "EXCHANGE_FEDERATION_LISTEN": "127.0.0.1:7445",
        "EXCHANGE_HUB_CODE": "350200",
        "EXCHANGE_HUB_NAME": "厦门市",
        "EXCHANGE_HUB_LEVEL": "city",
        "EXCHANGE_WORKERS": "2",
    }
    settings = config.load(environ=env)
    assert (settings.workers, settings.federation_listen) == (2, "127.0.0.1:7445")


def test_bad_file_is_reported(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("listen = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load(broken, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "missing.toml", environ={})
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('colour = "blue"\n')
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        config.load(unknown, environ={})
