import base64

import pytest

from webhook_service.config import ConfigError, Settings, load_settings

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789").decode()


def test_defaults_match_the_contract():
    settings = load_settings({})
    assert settings.modelgates_base_url == "https://modelgates.ai/api/v1"
    assert settings.database_path.name == "webhook_service.sqlite3"
    assert settings.database_path.is_absolute()
    assert settings.poll_after_seconds == 120 and settings.poll_interval_seconds == 30
    assert settings.submit_timeout_seconds == 3600
    assert settings.download_give_up_seconds == 86400
    assert settings.trusted_proxy_count == 1
    assert settings.worker_lease_seconds == 60
    assert settings.webhook_secrets == () and settings.service_api_tokens == ()
    assert settings.database_url is None and settings.media_storage is None
    assert settings.notify_url is None and settings.notify_signing_secret is None
    assert not settings.allow_private_notify_urls
    assert (settings.log_level, settings.log_format) == ("INFO", "text")
    assert settings.secret_key is None
    assert settings.database_pool_size == 4


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
    "value",
    [
        "https://videos.example.com",
        "https://videos.example.com/",
        "https://videos.example.com:8443",
        "https://[2001:db8::1]:443",
        "https://10.0.0.1",
    ],
)
def test_usable_public_origins_are_kept_without_a_trailing_slash(value):
    assert load_settings({"PUBLIC_BASE_URL": value}).public_base_url == value.rstrip("/")


@pytest.mark.parametrize(
    "value",
    [
        "https://modelgates.ai/api/v1",
        "https://modelgates.ai/api/v1/",
        "http://127.0.0.1:8090/api/v1",
        "https://gateway.example:8443/proxy/modelgates/api/v1",
    ],
)
def test_api_bases_with_a_path_are_accepted(value):
    assert load_settings({"MODELGATES_BASE_URL": value}).modelgates_base_url == value.rstrip("/")


@pytest.mark.parametrize(
    "name, value",
    [
        ("POLL_AFTER_SECONDS", "soon"),
        ("POLL_INTERVAL_SECONDS", "0"),
        ("POLL_INTERVAL_SECONDS", "nan"),
        ("TRUSTED_PROXY_COUNT", "1.5"),
        ("TRUSTED_PROXY_COUNT", "-1"),
        ("TRUSTED_PROXY_COUNT", "inf"),
        ("WORKER_LEASE_SECONDS", "0"),
        ("WORKER_LEASE_SECONDS", "-60"),
        ("WORKER_LEASE_SECONDS", "4.9"),
        ("WORKER_LEASE_SECONDS", "a minute"),
        ("WORKER_LEASE_SECONDS", "nan"),
        ("WORKER_LEASE_SECONDS", "inf"),
        ("PUBLIC_BASE_URL", "videos.example"),
        ("PUBLIC_BASE_URL", "https://x/?a=1"),
        ("PUBLIC_BASE_URL", "https://x#top"),
        ("PUBLIC_BASE_URL", "https://videos.example.com/app"),
        ("PUBLIC_BASE_URL", "https://videos.example.com/webhooks/modelgates"),
        ("PUBLIC_BASE_URL", "https://videos.example.com:http"),
        ("PUBLIC_BASE_URL", "https://videos.example.com:0"),
        ("PUBLIC_BASE_URL", "https://videos.example.com:65536"),
        ("PUBLIC_BASE_URL", "https://videos.example.com:99999999"),
        ("PUBLIC_BASE_URL", "https://user:pass@videos.example.com"),
        ("PUBLIC_BASE_URL", "https://user@videos.example.com"),
        ("PUBLIC_BASE_URL", "https://"),
        ("PUBLIC_BASE_URL", "https:///path"),
        ("PUBLIC_BASE_URL", "https://:443"),
        ("PUBLIC_BASE_URL", "https://exa mple.com"),
        ("PUBLIC_BASE_URL", "https://-bad-.example"),
        ("PUBLIC_BASE_URL", "https://[not-ipv6]"),
        ("PUBLIC_BASE_URL", "ftp://videos.example.com"),
        ("MODELGATES_BASE_URL", "ftp://x"),
        ("MODELGATES_BASE_URL", "modelgates.ai/api/v1"),
        ("MODELGATES_BASE_URL", "https://key@modelgates.ai/api/v1"),
        ("MODELGATES_BASE_URL", "https://modelgates.ai:0/api/v1"),
        ("MODELGATES_BASE_URL", "https://modelgates.ai:70000/api/v1"),
        ("MODELGATES_BASE_URL", "https://modelgates.ai:abc/api/v1"),
        ("MODELGATES_BASE_URL", "https://modelgates.ai/api/v1?key=1"),
        ("MODELGATES_BASE_URL", "https://modelgates.ai/api/v1#x"),
        ("MODELGATES_BASE_URL", "https:///api/v1"),
        ("ALLOW_INSECURE_CALLBACKS", "maybe"),
        ("ALLOW_PRIVATE_NOTIFY_URLS", "sure"),
        ("DATABASE_URL", "mysql://db.example/videos"),
        ("DATABASE_URL", "sqlite:///tmp/x.sqlite3"),
        ("DATABASE_URL", "db.example:5432/videos"),
        ("DATABASE_URL", "postgresql://db.example:0/videos"),
        ("DATABASE_URL", "postgresql://db.example:port/videos"),
        ("DATABASE_URL", "postgresql://db.example:70000/videos"),
        ("MEDIA_STORAGE", "/var/videos"),
        ("MEDIA_STORAGE", "gs://bucket"),
        ("MEDIA_STORAGE", "s3://"),
        ("MEDIA_STORAGE", "s3://ab"),
        ("MEDIA_STORAGE", "s3://" + "a" * 64),
        ("MEDIA_STORAGE", "s3://My-Bucket"),
        ("MEDIA_STORAGE", "s3://bucket_name"),
        ("MEDIA_STORAGE", "s3://-bucket"),
        ("MEDIA_STORAGE", "s3://bucket-"),
        ("MEDIA_STORAGE", "s3://my..bucket"),
        ("MEDIA_STORAGE", "s3://my.-bucket"),
        ("MEDIA_STORAGE", "s3://192.168.1.10"),
        ("MEDIA_STORAGE", "s3://xn--bucket"),
        ("MEDIA_STORAGE", "s3://bucket-s3alias"),
        ("MEDIA_STORAGE", "s3://key:secret@bucket"),
        ("MEDIA_STORAGE", "s3://bucket:9000"),
        ("MEDIA_STORAGE", "s3://bucket/videos?x=1"),
        ("MEDIA_STORAGE", "s3://bucket/a//b"),
        ("MEDIA_STORAGE", "s3://bucket/a/../b"),
        ("NOTIFY_URL", "notify.example/hook"),
        ("NOTIFY_URL", "ftp://notify.example/hook"),
        ("NOTIFY_URL", "http://notify.example/hook"),
        ("NOTIFY_URL", "https://user:pw@notify.example/hook"),
        ("NOTIFY_URL", "https://notify.example:0/hook"),
        ("NOTIFY_URL", "https://notify.example/hook#frag"),
        ("NOTIFY_SIGNING_SECRET", "secret"),
        ("NOTIFY_SIGNING_SECRET", "whsec_"),
        ("NOTIFY_SIGNING_SECRET", "whsec_not base64!"),
        ("NOTIFY_SIGNING_SECRET", "whsec_abc"),
        ("LOG_LEVEL", "LOUD"),
        ("LOG_FORMAT", "xml"),
        ("DATABASE_POOL_SIZE", "0"),
        ("DATABASE_POOL_SIZE", "2.5"),
        ("DATABASE_POOL_SIZE", "many"),
        ("REQUEST_READ_TIMEOUT_SECONDS", "0"),
        ("REQUEST_READ_TIMEOUT_SECONDS", "never"),
    ],
)
def test_unusable_values_fail_with_one_clear_line(name, value):
    env = {name: value}
    if name == "NOTIFY_URL":
        env["NOTIFY_SIGNING_SECRET"] = SECRET
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    message = str(caught.value)
    assert name in message
    assert "\n" not in message and message.strip() == message and message


def test_lease_of_five_seconds_is_the_smallest_accepted():
    assert load_settings({"WORKER_LEASE_SECONDS": "5"}).worker_lease_seconds == 5
    assert load_settings({"WORKER_LEASE_SECONDS": "90.5"}).worker_lease_seconds == 90.5


def test_database_path_that_is_a_directory_fails_at_start(tmp_path):
    with pytest.raises(ConfigError, match="DATABASE_PATH is a directory"):
        load_settings({"DATABASE_PATH": str(tmp_path)})


def test_database_path_whose_folder_cannot_be_created_fails_at_start(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as caught:
        load_settings({"DATABASE_PATH": str(blocker / "sub" / "db.sqlite3")})
    assert str(caught.value).startswith("DATABASE_PATH: cannot create")
    assert "\n" not in str(caught.value)


def test_database_path_is_not_checked_when_postgresql_holds_the_state(tmp_path):
    settings = load_settings(
        {"DATABASE_PATH": str(tmp_path), "DATABASE_URL": "postgres://u:p@db.example/videos"}
    )
    assert settings.database_url == "postgres://u:p@db.example/videos"


@pytest.mark.parametrize(
    "value",
    [
        "postgresql://app:pw@db.example:5432/videos?sslmode=require",
        "postgres://app:pw@db.example/videos",
        "postgresql:///videos",
        "postgresql://db1.example:5432,db2.example:5433/videos",
    ],
)
def test_postgresql_urls_are_accepted(value):
    assert load_settings({"DATABASE_URL": value}).database_url == value


def test_media_storage_is_split_into_bucket_and_prefix():
    settings = load_settings({"MEDIA_STORAGE": "s3://my.video-bucket/tenants/a/"})
    assert (settings.media_bucket, settings.media_prefix) == ("my.video-bucket", "tenants/a")
    bare = load_settings({"MEDIA_STORAGE": "s3://videos"})
    assert (bare.media_bucket, bare.media_prefix) == ("videos", "")


def test_notify_url_needs_a_signing_secret():
    with pytest.raises(ConfigError, match="NOTIFY_SIGNING_SECRET"):
        load_settings({"NOTIFY_URL": "https://app.example/hooks/videos"})
    settings = load_settings(
        {
            "NOTIFY_URL": "https://app.example/hooks/videos?tenant=1",
            "NOTIFY_SIGNING_SECRET": SECRET,
            "ALLOW_PRIVATE_NOTIFY_URLS": "1",
        }
    )
    assert settings.notify_url == "https://app.example/hooks/videos?tenant=1"
    assert settings.notify_signing_secret == SECRET and settings.allow_private_notify_urls


def test_http_notify_url_is_allowed_with_the_insecure_flag():
    settings = load_settings(
        {
            "NOTIFY_URL": "http://127.0.0.1:9000/hook",
            "NOTIFY_SIGNING_SECRET": SECRET,
            "ALLOW_INSECURE_CALLBACKS": "1",
        }
    )
    assert settings.notify_url == "http://127.0.0.1:9000/hook"


def test_logging_settings_are_normalised():
    settings = load_settings({"LOG_LEVEL": "debug", "LOG_FORMAT": "JSON"})
    assert (settings.log_level, settings.log_format) == ("DEBUG", "json")


def test_secrets_never_appear_in_the_repr():
    settings = load_settings(
        {
            "MODELGATES_API_KEY": "sk-live-123",
            "MODELGATES_WEBHOOK_SECRETS": "whsec",
            "SERVICE_API_TOKENS": "tok-abc",
            "DATABASE_URL": "postgresql://app:db-password-9@db.example/videos",
            "NOTIFY_URL": "https://app.example/hook",
            "NOTIFY_SIGNING_SECRET": SECRET,
            "SECRET_KEY": "flask-session-key-77",
        }
    )
    text = repr(settings)
    for secret in ("sk-live-123", "whsec", "tok-abc", "db-password-9", "flask-session-key-77"):
        assert secret not in text
    assert settings.database_url_redacted == "postgresql://app:***@db.example/videos"
    assert "db-password-9" not in repr(Settings(database_url="postgresql://a:db-password-9@h/d"))


def test_dotenv_in_the_working_directory_is_read(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("WORKER_LEASE_SECONDS=42\nLOG_FORMAT=json\n")
    monkeypatch.chdir(tmp_path)
    # Set, then delete: so the value .env puts into os.environ is removed after the test.
    monkeypatch.setenv("WORKER_LEASE_SECONDS", "5")
    monkeypatch.delenv("WORKER_LEASE_SECONDS")
    monkeypatch.setenv("LOG_FORMAT", "text")
    settings = load_settings()
    assert settings.worker_lease_seconds == 42
    assert settings.log_format == "text"  # the real environment wins over .env


def test_an_uncreatable_media_dir_fails_at_start(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="MEDIA_DIR"):
        load_settings(
            {"DATABASE_PATH": str(tmp_path / "db.sqlite3"), "MEDIA_DIR": str(blocker / "videos")}
        )
