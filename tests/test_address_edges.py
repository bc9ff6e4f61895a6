"""The client address ``allowed_ips`` is checked against, at its edges: IPv4 seen through an
IPv6 socket, plain IPv6, a peer with no address, and ``X-Forwarded-For`` written without
spaces."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

from ingest.addresses import allowed, client_address

PROXIES = (ip_network("10.0.0.0/8"),)
LOOPBACK = (ip_network("127.0.0.0/8"), ip_network("::1/128"))


def test_an_ipv4_client_on_a_dual_stack_socket_matches_ipv4_rules() -> None:
    # Given a peer an IPv6 socket reports as an IPv4-mapped address
    addr = client_address("::ffff:127.0.0.1", [], ())
    # Then it is the IPv4 address, and IPv4 rules admit it
    assert addr == ip_address("127.0.0.1")
    assert allowed(addr, LOOPBACK)


def test_a_plain_ipv6_client_keeps_its_address() -> None:
    addr = client_address("::1", [], ())
    assert addr == ip_address("::1")
    assert allowed(addr, LOOPBACK)
    assert not allowed(client_address("2001:db8::1", [], ()), LOOPBACK)


def test_a_peer_without_an_address_behind_trusted_proxies_is_no_address() -> None:
    # Given proxies are trusted and the peer has no IP address (a Unix socket)
    # Then no address is established, and nothing is admitted by address
    assert client_address(None, ["203.0.113.7"], PROXIES) is None
    assert not allowed(None, LOOPBACK)


def test_forwarded_for_without_spaces_is_split_on_commas() -> None:
    # Given a trusted proxy that appended its own hop to the header, no space after the comma
    addr = client_address("10.0.0.1", ["203.0.113.7,10.0.0.2"], PROXIES)
    # Then the client is the right-most entry that is not a trusted proxy
    assert addr == ip_address("203.0.113.7")
