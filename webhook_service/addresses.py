"""Which notification URLs the service may POST to: the outbound security boundary.

A client chooses where its notifications go, so without a check anyone with an API token
could make the service send requests into its own network (cloud metadata at 169.254.169.254,
an admin port on 127.0.0.1, a database on 10.x). `vet_notify_url` is that check:

- the URL is ``https://`` (``http://`` only when insecure callbacks are allowed), has a host,
  a valid port, no user info and no fragment, and only printable ASCII outside the host;
- the host is a domain name or an IP literal; an IP literal in any spelling a resolver would
  accept (``2130706433``, ``0x7f.1``, ``0177.0.0.1``, ``[::ffff:127.0.0.1]``) is read as
  the address it denotes and vetted as such;
- unless private addresses are allowed, the host must not be, and **every** address it resolves
  to must not be, anything but a globally routable unicast address: loopback, private,
  link-local, multicast, reserved, unspecified, shared (100.64/10), benchmark, documentation,
  IPv6 unique-local or site-local, and IPv6 forms that carry an IPv4 address inside
  (IPv4-mapped and -compatible, NAT64, 6to4, Teredo) are refused when the address inside is.

Checking once at submit time is not enough: a name can resolve to a public address then and to
127.0.0.1 a second later (DNS rebinding). So delivery vets again and connects to the exact
addresses it vetted (`VettedURL.addresses`), never resolving the name a second time; TLS still
verifies the certificate against the host name.

Resolution is injectable (``resolve``, shaped like `socket.getaddrinfo`) so tests never touch
real DNS. Every refusal is a `NotifyURLError` (a `ValueError`) whose message is a sentence
fit for a 422 answer.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

Resolver = Callable[..., Sequence[tuple[Any, ...]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_PORT = re.compile(r"^[0-9]{1,5}$")
_IPV4_PART = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")

# Ranges refused by name, in the order they are reported; ipaddress's is_global (below)
# catches the rest. Explicit because is_global differs between Python patch releases.
_REFUSED: tuple[tuple[str, str], ...] = (
    ("0.0.0.0/8", "an unspecified ('this network') address"),
    ("127.0.0.0/8", "a loopback address"),
    ("10.0.0.0/8", "a private address"),
    ("172.16.0.0/12", "a private address"),
    ("192.168.0.0/16", "a private address"),
    ("100.64.0.0/10", "a shared (carrier-grade NAT) address"),
    ("169.254.0.0/16", "a link-local address"),
    ("192.0.0.0/24", "a reserved (IETF protocol) address"),
    ("192.0.2.0/24", "a documentation address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("192.88.99.0/24", "a reserved (6to4 relay) address"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved address"),
    ("::/128", "an unspecified address"),
    ("::1/128", "a loopback address"),
    ("::/96", "an IPv4-compatible (deprecated) address"),
    ("::ffff:0:0/96", "an IPv4-mapped address"),
    ("::ffff:0:0:0/96", "an IPv4-translated address"),
    ("fc00::/7", "a unique-local (private) address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("ff00::/8", "a multicast address"),
    ("100::/64", "a discard-only address"),
    ("2001:db8::/32", "a documentation address"),
    ("3fff::/20", "a documentation address"),
    ("2001::/23", "a reserved (IETF protocol) address"),
    ("64:ff9b:1::/48", "a local-use NAT64 address"),
    ("5f00::/16", "a reserved (segment routing) address"),
)
_REFUSED_NETWORKS = tuple((ipaddress.ip_network(net), why) for net, why in _REFUSED)
_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")


class NotifyURLError(ValueError):
    """A notification URL refused; ``str(exc)`` is a sentence for the client."""


@dataclass(frozen=True)
class VettedURL:
    """A URL that passed every check, and the addresses delivery may connect to."""

    url: str
    host: str
    port: int
    addresses: tuple[str, ...]


def check_notify_url(
    url: object, *, allow_http: bool, allow_private: bool, resolve: Resolver = socket.getaddrinfo
) -> str:
    """Return ``url`` normalised, or raise `NotifyURLError` saying why it is refused."""
    return vet_notify_url(
        url, allow_http=allow_http, allow_private=allow_private, resolve=resolve
    ).url


def vet_notify_url(
    url: object, *, allow_http: bool, allow_private: bool, resolve: Resolver = socket.getaddrinfo
) -> VettedURL:
    """Check ``url`` and resolve its host; the result pins the addresses to connect to."""
    scheme, host, port, normalised = _parse(url, allow_http=allow_http)
    if not allow_private and (host == "localhost" or host.endswith(".localhost")):
        raise NotifyURLError(f"notify_url host {host} is a loopback name.")  # whatever DNS says
    literal = _ip_literal(host)
    if literal is not None:
        addresses: tuple[IPAddress, ...] = (literal,)
    else:
        addresses = _resolve(host, port, resolve)
    if not allow_private:
        for address in addresses:
            reason = refusal_reason(address)
            if reason is not None:
                shown = host if literal is not None else f"{host} resolves to {address}, which"
                raise NotifyURLError(f"notify_url host {shown} is {reason}.")
    return VettedURL(normalised, host, port, tuple(str(address) for address in addresses))


def refusal_reason(address: IPAddress) -> str | None:
    """Say what kind of non-public address ``address`` is, or None if it may be contacted."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return "a scoped (link-local) address"
        inner = _embedded_ipv4(address)
        reason = None if inner is None else refusal_reason(inner)
        if reason is not None:
            return f"{reason} ({inner}) wrapped in IPv6"
    for network, why in _REFUSED_NETWORKS:
        if address.version == network.version and address in network:
            return why
    if not address.is_global or address.is_multicast:
        return "not a globally routable address"
    return None


def static_resolver(table: Mapping[str, Sequence[str]]) -> Resolver:
    """A `socket.getaddrinfo` stand-in answering from ``table`` (host name → addresses)."""

    def resolve(host: str, port: Any, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answers = []
        for text in table[host]:
            family = socket.AF_INET6 if ":" in text else socket.AF_INET
            answers.append((family, socket.SOCK_STREAM, 6, "", (text, port)))
        return answers

    return resolve


def _parse(url: object, *, allow_http: bool) -> tuple[str, str, int, str]:
    """Split and normalise the URL; return (scheme, ascii host, port, normalised URL)."""
    if not isinstance(url, str) or not url:
        raise NotifyURLError("notify_url must be a non-empty string.")
    if len(url) > MAX_URL_LENGTH:
        raise NotifyURLError(f"notify_url is longer than {MAX_URL_LENGTH} characters.")
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url) or "\\" in url:
        raise NotifyURLError("notify_url must not contain spaces, control characters or '\\'.")
    if "#" in url:
        raise NotifyURLError("notify_url must not have a fragment ('#').")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise NotifyURLError(f"notify_url is not a valid URL ({exc}).") from None
    scheme = parts.scheme.lower()
    allowed = ("https", "http") if allow_http else ("https",)
    if scheme not in allowed:
        raise NotifyURLError(
            "notify_url must be an https:// URL."
            if not allow_http
            else "notify_url must be an http:// or https:// URL."
        )
    if not parts.netloc:
        raise NotifyURLError("notify_url must have a host.")
    if "@" in parts.netloc:
        raise NotifyURLError("notify_url must not carry a user name or password.")
    host, port_text = _split_authority(parts.netloc)
    default = 443 if scheme == "https" else 80
    port = default
    if port_text is not None:
        if not _PORT.match(port_text) or not 0 < int(port_text) < 65536:
            raise NotifyURLError("notify_url has an invalid port.")
        port = int(port_text)
    if any(not char.isascii() or not char.isprintable() for char in parts.path + parts.query):
        raise NotifyURLError("notify_url's path and query must be ASCII (percent-encode the rest).")
    shown_host = f"[{host}]" if ":" in host else host
    netloc = shown_host if port == default else f"{shown_host}:{port}"
    normalised = urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))
    return scheme, host, port, normalised


def _split_authority(netloc: str) -> tuple[str, str | None]:
    """Return (normalised host, port text or None) from a URL's authority (no user info)."""
    if netloc.startswith("["):
        inside, bracket, rest = netloc[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise NotifyURLError("notify_url has an invalid IPv6 address.")
        try:
            address = ipaddress.IPv6Address(inside)
        except ValueError:
            raise NotifyURLError("notify_url has an invalid IPv6 address.") from None
        if address.scope_id:
            raise NotifyURLError("notify_url must not use a scoped IPv6 address.")
        return str(address), (rest[1:] if rest else None)
    host, colon, port_text = netloc.rpartition(":")
    if not colon:
        host, port_text = netloc, ""
    return _normalise_host(host), (port_text if colon else None)


def _normalise_host(host: str) -> str:
    """Return a non-bracketed host as lower-case ASCII: a canonical IPv4 address or a name."""
    host = host.rstrip(".") if host.endswith(".") and not host.endswith("..") else host
    if not host:
        raise NotifyURLError("notify_url must have a host.")
    try:
        host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise NotifyURLError("notify_url has an invalid host name.") from None
    numeric = _whatwg_ipv4(host)
    if numeric is not None:
        return str(numeric)
    if len(host) > 253 or not all(_LABEL.match(label) for label in host.split(".")):
        raise NotifyURLError("notify_url has an invalid host name.")
    return host


def _whatwg_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Read ``host`` as an IPv4 number the way browsers and inet_aton do, if it is one.

    A host whose last label is numeric (decimal, octal with a leading 0, or 0x-hex) is an
    IPv4 address in one of the shorthand forms (``a``, ``a.b``, ``a.b.c``, ``a.b.c.d``);
    one that looks numeric but overflows is refused rather than treated as a name.
    """
    labels = host.split(".")
    if not _IPV4_PART.match(labels[-1]):
        return None
    if len(labels) > 4 or not all(_IPV4_PART.match(label) for label in labels):
        raise NotifyURLError("notify_url has an invalid numeric host.")
    numbers = []
    for label in labels:
        if label.startswith("0x"):
            numbers.append(int(label[2:] or "0", 16))
        elif len(label) > 1 and label.startswith("0"):
            if not set(label) <= set("01234567"):
                raise NotifyURLError("notify_url has an invalid numeric host.")
            numbers.append(int(label, 8))
        else:
            numbers.append(int(label))
    *head, last = numbers
    if any(part > 255 for part in head) or last >= 256 ** (5 - len(numbers)):
        raise NotifyURLError("notify_url has an invalid numeric host.")
    value = last
    for shift, part in enumerate(head):
        value += part << (8 * (3 - shift))
    return ipaddress.IPv4Address(value)


def _ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells, if it is an IP literal (already canonical here)."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _resolve(host: str, port: int, resolve: Resolver) -> tuple[IPAddress, ...]:
    """Every address ``host`` resolves to, or `NotifyURLError`."""
    try:
        answers = resolve(host, port, 0, socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise NotifyURLError(f"notify_url host {host} does not resolve.") from None
    addresses: list[IPAddress] = []
    for answer in answers:
        try:
            text = str(answer[4][0]).partition("%")[0]
            address = ipaddress.ip_address(text)
        except (IndexError, TypeError, ValueError):
            raise NotifyURLError(
                f"notify_url host {host} resolves to an unusable address."
            ) from None
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise NotifyURLError(f"notify_url host {host} does not resolve.")
    return tuple(addresses)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _TRANSLATED or address in _NAT64 or (address in _COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None
