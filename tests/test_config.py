import pytest

from webhook_service.config import ConfigError, load_settings


def test_defaults_match_the_contract():
    settings = load_settings({})
    assert settings.modelgates_base_url == "https://modelgates.ai/api/v1"
    assert settings.database_path.name == "webhook_service.sqlite3"
    assert settings.database_path.is_absolute()
    assert settings.poll_after_seconds == 120 and settings.poll_interval_seconds == 30
    assert settings.submit_timeout_seconds == 3600
    assert settings.download_give_up_seconds == 86400
    assert settings.trusted_proxy_count == 1
    assert settings.webhook_secrets == () and settings.service_api_tokens == ()


def test_lists_are_split_and_empty_entries_dropped():
    settings = load_settings({"MODELGATES_WEBHOOK_SECRETS": " a, ,b,", "SERVICE_API_TOKENS": "x"})
    assert settings.webhook_secrets == ("a", "b")
    assert settings.service_api_tokens == ("x",)


def test_http_public_url_needs_the_insecure_flag():
    with pytest.raises(ConfigError, match="ALLOW_INSECURE_CALLBACKS"):
        load_settings({"PUBLIC_BASE_URL": "http://videos.example"})
    settings = load_settings(
        {"PUBLIC_BASE_URL": "http://127.0.0.1:5000/", "ALLOW_INSECURE_CALLBACKS": "1"}
    )
    assert settings.callback_url("tok") == "http://127.0.0.1:5000/webhooks/modelgates/tok"


@pytest.mark.parametrize(
    "name, value",
    [
        ("POLL_AFTER_SECONDS", "soon"),
        ("POLL_INTERVAL_SECONDS", "0"),
        ("TRUSTED_PROXY_COUNT", "1.5"),
        ("TRUSTED_PROXY_COUNT", "-1"),
        ("TRUSTED_PROXY_COUNT", "inf"),
        ("POLL_INTERVAL_SECONDS", "nan"),
        ("PUBLIC_BASE_URL", "videos.example"),
        ("MODELGATES_BASE_URL", "ftp://x"),
        ("PUBLIC_BASE_URL", "https://x/?a=1"),
    ],
)
def test_unusable_values_fail_with_one_clear_line(name, value):
    with pytest.raises(ConfigError) as caught:
        load_settings({name: value})
    assert name in str(caught.value) and "\n" not in str(caught.value)


def test_secrets_never_appear_in_the_repr():
    settings = load_settings(
        {
            "MODELGATES_API_KEY": "sk-live-123",
            "MODELGATES_WEBHOOK_SECRETS": "whsec",
            "SERVICE_API_TOKENS": "tok-abc",
        }
    )
    text = repr(settings)
    assert "sk-live-123" not in text and "whsec" not in text and "tok-abc" not in text


def test_an_uncreatable_media_dir_fails_at_start(tmp_path):
    from webhook_service import create_app

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="MEDIA_DIR"):
        create_app(
            {"DATABASE_PATH": str(tmp_path / "db.sqlite3"), "MEDIA_DIR": str(blocker / "videos")}
        )
