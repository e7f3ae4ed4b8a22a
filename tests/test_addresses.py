"""Notification URL checks: every refused form and range, spelled every way, resolved or literal."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhook_service.addresses import (
    NotifyURLError,
    check_notify_url,
    refusal_reason,
    static_resolver,
    vet_notify_url,
)

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"


def no_dns(host, *args, **kwargs):
    raise AssertionError(f"{host} should not have been resolved")


def check(url, *, allow_http=False, allow_private=False, resolve=no_dns):
    return check_notify_url(
        url, allow_http=allow_http, allow_private=allow_private, resolve=resolve
    )


# One address per refused range, IPv4 and IPv6, with the word the refusal must use.
REFUSED_ADDRESSES = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.5", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),
    ("100.64.0.1", "shared"),
    ("100.127.255.254", "shared"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("192.0.0.8", "reserved"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("198.19.255.1", "benchmarking"),
    ("192.88.99.1", "reserved"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fd00::1", "unique-local"),
    ("fc12:3456::1", "unique-local"),
    ("fe80::1", "link-local"),
    ("febf::1", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("ff0e::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("100::1", "discard"),
    ("2001:10::1", "reserved"),
    ("64:ff9b:1::a00:1", "NAT64"),
    # IPv6 forms that carry an IPv4 address.
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.1.2.3", "private"),
    ("::ffff:169.254.169.254", "link-local"),
    ("::ffff:8.8.8.8", "IPv4-mapped"),
    ("::127.0.0.1", "loopback"),
    ("::8.8.8.8", "IPv4-compatible"),
    ("::ffff:0:10.0.0.1", "private"),
    ("64:ff9b::10.0.0.5", "private"),
    ("64:ff9b::127.0.0.1", "loopback"),
    ("64:ff9b::169.254.169.254", "link-local"),
    ("2002:7f00:1::", "loopback"),
    ("2002:c0a8:101::1", "private"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffa", "private"),  # Teredo, client 10.0.0.5
]


@pytest.mark.parametrize(("address", "word"), REFUSED_ADDRESSES)
def test_an_ip_literal_in_a_refused_range_is_refused(address, word):
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(NotifyURLError, match=word):
        check(f"https://{host}/hook")


@pytest.mark.parametrize(("address", "word"), REFUSED_ADDRESSES)
def test_a_name_resolving_to_a_refused_address_is_refused(address, word):
    resolve = static_resolver({"hooks.example.com": [address]})
    with pytest.raises(NotifyURLError, match=f"resolves to .*{word}"):
        check("https://hooks.example.com/hook", resolve=resolve)


@pytest.mark.parametrize(("address", "word"), REFUSED_ADDRESSES)
def test_allow_private_lets_every_range_through(address, word):
    host = f"[{address}]" if ":" in address else address
    assert check(f"https://{host}/hook", allow_private=True).startswith("https://")


@pytest.mark.parametrize(
    "address", [PUBLIC_V4, "8.8.8.8", "1.1.1.1", PUBLIC_V6, "64:ff9b::808:808", "2002:808:808::1"]
)
def test_a_public_address_is_accepted(address):
    host = f"[{address}]" if ":" in address else address
    assert check(f"https://{host}/hook") == f"https://{host}/hook"


def test_every_resolved_address_must_pass_not_only_the_first():
    resolve = static_resolver({"hooks.example.com": [PUBLIC_V4, PUBLIC_V6, "10.0.0.5"]})
    with pytest.raises(NotifyURLError, match="10.0.0.5"):
        check("https://hooks.example.com/", resolve=resolve)
    resolve = static_resolver({"hooks.example.com": [PUBLIC_V4, "::1"]})
    with pytest.raises(NotifyURLError, match="::1"):
        check("https://hooks.example.com/", resolve=resolve)


def test_a_public_name_is_accepted_and_every_address_is_kept_for_the_connection():
    resolve = static_resolver({"hooks.example.com": [PUBLIC_V4, PUBLIC_V6, PUBLIC_V4]})
    vetted = vet_notify_url(
        "https://Hooks.Example.com./events?x=1",
        allow_http=False,
        allow_private=False,
        resolve=resolve,
    )
    assert vetted.url == "https://hooks.example.com/events?x=1"
    assert (vetted.host, vetted.port) == ("hooks.example.com", 443)
    assert vetted.addresses == (PUBLIC_V4, PUBLIC_V6)


def test_a_resolver_answer_with_a_scope_is_read_without_it():
    def resolve(host, port, *args):
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fe80::1%eth0", port, 0, 2))]

    with pytest.raises(NotifyURLError, match="link-local"):
        check("https://hooks.example.com/", resolve=resolve)


@pytest.mark.parametrize(
    "url",
    [
        "https://2130706433/",
        "https://0x7f000001/",
        "https://0x7f.1/",
        "https://0x7f.0.0.1/",
        "https://0177.0.0.1/",
        "https://017700000001/",
        "https://127.1/",
        "https://127.0.1/",
        "https://127.0.0.1./",
        "https://0/",
        "https://0x0a.0.0.5/",
        "https://167772165/",
        "https://0xA9.0xFE.0xA9.0xFE/",
        "https://１２７.０.０.１/",
        "https://[::ffff:7f00:1]/",
        "https://[0:0:0:0:0:ffff:127.0.0.1]/",
        "https://[::FFFF:127.0.0.1]:8443/",
    ],
)
def test_every_spelling_of_a_refused_ipv4_address_is_caught(url):
    with pytest.raises(NotifyURLError, match="is (a|an) "):
        check(url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://2130706433/", "https://127.0.0.1/"),
        ("https://0x7f.1:8443/x", "https://127.0.0.1:8443/x"),
        ("https://[::FFFF:127.0.0.1]/", "https://[::ffff:7f00:1]/"),
    ],
)
def test_a_numeric_host_is_normalised_to_the_address_it_denotes(url, expected):
    assert check(url, allow_private=True) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://example.com/", "https://"),
        ("ftp://example.com/", "https://"),
        ("file:///etc/passwd", "https://"),
        ("javascript:alert(1)", "https://"),
        ("example.com/hook", "https://"),
        ("//example.com/hook", "https://"),
        ("https://", "host"),
        ("https:///hook", "host"),
        ("https://user@example.com/", "user name"),
        ("https://user:pass@example.com/", "user name"),
        ("https://:@example.com/", "user name"),
        ("https://example.com/#frag", "fragment"),
        ("https://example.com#", "fragment"),
        ("https://example.com:0/", "port"),
        ("https://example.com:65536/", "port"),
        ("https://example.com:-1/", "port"),
        ("https://example.com:+443/", "port"),
        ("https://example.com:/", "port"),
        ("https://example.com:8o/", "port"),
        ("https://example.com:٤٤٣/", "port"),
        ("https://exa mple.com/", "spaces"),
        ("https://example.com/\n", "control"),
        ("https://example.com\\@10.0.0.1/", "'\\\\'"),
        ("https://[::1/", "IPv6"),
        ("https://[::1]junk/", "IPv6"),
        ("https://[not-an-address]/", "IPv6"),
        ("https://[fe80::1%25eth0]/", "scoped"),
        ("https://exa_mple..com/", "host name"),
        ("https://-example.com/", "host name"),
        ("https://" + "a" * 64 + ".com/", "host name"),
        ("https://localhost/", "loopback name"),
        ("https://LOCALHOST./", "loopback name"),
        ("https://api.localhost/", "loopback name"),
        ("https://1.2.3.4.5/", "numeric host"),
        ("https://256.0.0.1/", "numeric host"),
        ("https://4294967296/", "numeric host"),
        ("https://08.0.0.1/", "numeric host"),
        ("https://example.123/", "numeric host"),
        ("https://example.com/é", "ASCII"),
        ("https://example.com/" + "a" * 3000, "longer"),
        ("", "non-empty"),
    ],
)
def test_a_malformed_or_forbidden_url_is_refused_with_a_reason(url, message):
    with pytest.raises(NotifyURLError, match=message):
        check(url, resolve=static_resolver({"example.com": [PUBLIC_V4]}))


@pytest.mark.parametrize("value", [None, 42, b"https://example.com/", ["https://example.com/"]])
def test_a_value_that_is_not_a_string_is_refused(value):
    with pytest.raises(NotifyURLError, match="string"):
        check(value)


def test_http_is_accepted_only_when_allowed():
    resolve = static_resolver({"example.com": [PUBLIC_V4]})
    assert check("http://example.com/h", allow_http=True, resolve=resolve) == "http://example.com/h"
    assert check("HTTP://example.com:80/h", allow_http=True, resolve=resolve) == (
        "http://example.com/h"
    )
    with pytest.raises(NotifyURLError, match="https://"):
        check("http://example.com/h", resolve=resolve)


def test_allow_http_does_not_allow_private_addresses():
    with pytest.raises(NotifyURLError, match="loopback"):
        check("http://127.0.0.1:8080/", allow_http=True)


def test_an_unresolvable_host_is_refused_even_when_private_addresses_are_allowed():
    with pytest.raises(NotifyURLError, match="does not resolve"):
        check("https://nowhere.example/", allow_private=True, resolve=static_resolver({}))


def test_a_resolver_answering_nothing_or_garbage_is_a_refusal_not_a_crash():
    with pytest.raises(NotifyURLError, match="does not resolve"):
        check("https://example.com/", resolve=lambda *args, **kwargs: [])
    with pytest.raises(NotifyURLError, match="unusable"):
        check("https://example.com/", resolve=lambda *a, **k: [(2, 1, 6, "", ("nonsense", 443))])

    def failing(*args, **kwargs):
        raise UnicodeError("label too long")

    with pytest.raises(NotifyURLError, match="does not resolve"):
        check("https://example.com/", resolve=failing)


def test_an_internationalised_name_is_resolved_in_its_ascii_form():
    seen = []

    def resolve(host, port, *args):
        seen.append((host, port))
        return static_resolver({host: [PUBLIC_V4]})(host, port)

    assert check("https://bücher.example:8443/", resolve=resolve) == (
        "https://xn--bcher-kva.example:8443/"
    )
    assert seen == [("xn--bcher-kva.example", 8443)]


@given(st.ip_addresses())
def test_refusal_agrees_with_is_global_for_plain_addresses(address):
    """Whatever ipaddress does not call global is refused; public unicast passes."""
    reason = refusal_reason(address)
    if not address.is_global or address.is_multicast:
        assert reason is not None
    if reason is None:
        assert address.is_global


@given(st.ip_addresses(v=4))
def test_a_refused_ipv4_address_is_refused_in_every_wrapping(address):
    if refusal_reason(address) is None:
        return
    value = int(address)
    wrapped = [
        ipaddress.IPv6Address(f"::ffff:{address}"),
        ipaddress.IPv6Address(f"64:ff9b::{address}"),
        ipaddress.IPv6Address((0x2002 << 112) | (value << 80)),
        ipaddress.IPv6Address((0x20010000 << 96) | (value ^ 0xFFFFFFFF)),
    ]
    for form in wrapped:
        assert refusal_reason(form) is not None, form
    for spelling in (str(value), hex(value), f"0{value:o}"):
        with pytest.raises(NotifyURLError):
            check(f"https://{spelling}/")


_HOSTS = st.one_of(
    st.ip_addresses().map(lambda a: f"[{a}]" if a.version == 6 else str(a)),
    st.integers(min_value=0, max_value=2**33).map(str),
    st.integers(min_value=0, max_value=2**33).map(hex),
    st.sampled_from(["example.com", "hooks.test", "localhost", "bücher.example", "xn--", "."]),
    st.text(max_size=30),
)
_URLS = st.one_of(
    st.text(max_size=80),
    st.builds(
        "{}://{}{}{}{}{}{}".format,
        st.sampled_from(["https", "http", "HTTPS", "ftp", "", "h ttps"]),
        st.sampled_from(["", "user@", "u:p@", "@", ":@"]),
        _HOSTS,
        st.one_of(st.just(""), st.integers(-5, 70000).map(lambda p: f":{p}"), st.text(max_size=6)),
        st.sampled_from(["", "/", "/hook", "/a/../b", "/%zz", "/é"]),
        st.sampled_from(["", "?x=1", "?", "?é"]),
        st.sampled_from(["", "#", "#frag"]),
    ),
)


@settings(max_examples=400, deadline=None)
@given(_URLS, st.booleans(), st.booleans(), st.lists(st.ip_addresses(), max_size=3))
def test_checking_any_url_either_accepts_it_or_raises_notify_url_error(
    url, allow_http, allow_private, answers
):
    def resolve(host, port, *args, **kwargs):
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return static_resolver({host: [str(a) for a in answers]})(host, port)

    try:
        result = check_notify_url(
            url, allow_http=allow_http, allow_private=allow_private, resolve=resolve
        )
    except NotifyURLError as exc:
        assert str(exc)
        return
    assert result.startswith("https://" if not allow_http else ("https://", "http://"))
    # A normalised URL is stable: checking it again gives the same URL.
    assert (
        check_notify_url(
            result, allow_http=allow_http, allow_private=allow_private, resolve=resolve
        )
        == result
    )
    if not allow_private:
        vetted = vet_notify_url(result, allow_http=allow_http, allow_private=False, resolve=resolve)
        for address in vetted.addresses:
            assert ipaddress.ip_address(address).is_global


def test_localhost_is_allowed_only_with_the_private_flag():
    resolve = static_resolver({"localhost": ["127.0.0.1"], "api.localhost": ["127.0.0.1"]})
    for url in ("http://localhost:8080/hooks", "http://api.localhost/hooks"):
        assert check_notify_url(url, allow_http=True, allow_private=True, resolve=resolve) == url
        with pytest.raises(NotifyURLError, match="loopback"):
            check_notify_url(url, allow_http=True, allow_private=False, resolve=resolve)
