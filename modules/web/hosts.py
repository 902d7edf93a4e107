"""Which ``Host`` names the server answers to: the defence against DNS rebinding.

A web page on an attacker's name can make its own name resolve to 127.0.0.1 (or a LAN address)
and then talk to Atelier from the victim's browser; what gives it away is the ``Host`` header,
which still carries the attacker's name. So only names the operator meant are answered: the
loopback names always; with ``--listen`` also this machine's own names and the address the
connection arrived on; and whatever ``--allowed-hosts`` adds (a reverse proxy's public name).
An IP literal other than those is refused too: nothing legitimate reaches this machine under
another machine's address.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


def host_name_of(header: str) -> str | None:
    """The name or address of a ``Host`` header without its port, lower-case; None if malformed."""
    value = header.strip().lower()
    if not value or any(c.isspace() or c in "/\\@?#" for c in value):
        return None
    if value.startswith("["):  # [v6]:port
        end = value.find("]")
        if end < 0 or (value[end + 1:] and not _is_port(value[end + 1:])):
            return None
        return value[1:end]
    name, sep, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    if sep and not port.isdigit():
        return None
    return name.rstrip(".") or None


def _is_port(text: str) -> bool:
    return text.startswith(":") and text[1:].isdigit()


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_loopback(name: str) -> bool:
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class HostPolicy:
    """The names this server answers to. ``patterns``: exact names, ``.example.com`` for a domain
    and its subdomains, or ``*`` for any (which gives up the protection, so it is said at start)."""

    listen: bool = False
    machine_names: frozenset[str] = frozenset()
    patterns: frozenset[str] = frozenset()

    def allows(self, name: str, arrived_on: str | None) -> bool:
        """Whether a request for ``name`` (from :func:`host_name_of`) that arrived on the local
        address ``arrived_on`` is answered."""
        if is_loopback(name) or "*" in self.patterns or self.named_by_operator(name):
            return True
        if not self.listen:
            return False
        return name in self.machine_names or (arrived_on is not None and _is_ip(arrived_on)
                                              and name == arrived_on.lower())

    def named_by_operator(self, name: str) -> bool:
        """Whether ``--allowed-hosts`` names ``name`` itself (``*`` names nothing in particular)."""
        return bool(name) and (name in self.patterns or any(
            p.startswith(".") and (name == p[1:] or name.endswith(p)) for p in self.patterns))


def parse_allowed_hosts(text: str) -> frozenset[str]:
    """``--allowed-hosts`` as a set of lower-case patterns."""
    return frozenset(part.strip().lower().rstrip(".") for part in text.split(",") if part.strip())


def machine_names() -> frozenset[str]:
    """This machine's host names and the addresses they resolve to (for ``--listen``)."""
    names: set[str] = set()
    hostname = socket.gethostname().lower()
    for candidate in (hostname, f"{hostname}.local", _fqdn()):
        if candidate:
            names.add(candidate.rstrip("."))
    names.update(_addresses(hostname))
    return frozenset(names)


def _fqdn() -> str:
    try:
        return socket.getfqdn().lower()
    except OSError:
        return ""


def _addresses(hostname: str) -> Iterable[str]:
    try:
        infos = socket.getaddrinfo(hostname, None)
    except OSError as exc:
        log.debug("Could not resolve this machine's name %s: %s", hostname, exc)
        return ()
    return {str(info[4][0]).split("%")[0].lower() for info in infos}
