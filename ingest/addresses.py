"""The client address used for ``allowed_ips``.

The peer address, unless the peer is a trusted proxy: then the right-most ``X-Forwarded-For``
entry that is not itself a trusted proxy (entries left of it could be forged by the client).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from shared.config import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip(text: str | None) -> IPAddress | None:
    if not text:
        return None
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    # an IPv4 client seen through a dual-stack socket should match IPv4 rules
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _trusted(addr: IPAddress, proxies: Sequence[IPNetwork]) -> bool:
    return any(addr.version == net.version and addr in net for net in proxies)


def client_address(
    peer: str | None, forwarded_for: Sequence[str], proxies: Sequence[IPNetwork]
) -> IPAddress | None:
    """``None`` when no address can be established (a malformed forwarded entry included)."""
    addr = parse_ip(peer)
    if addr is None or not proxies or not _trusted(addr, proxies):
        return addr
    entries = [e.strip() for header in forwarded_for for e in header.split(",")]
    for entry in reversed(entries):
        hop = parse_ip(entry)
        if hop is None:
            return None
        if not _trusted(hop, proxies):
            return hop
    return addr


def allowed(addr: IPAddress | None, networks: Sequence[IPNetwork]) -> bool:
    return addr is not None and _trusted(addr, networks)
