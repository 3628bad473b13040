"""Lists of servers as connection settings write them: ``host[:port],[ipv6][:port],…``."""

from __future__ import annotations


def split_servers(servers: str) -> tuple[list[str], list[str]]:
    """A list of servers (``primary:5432,[::1]:5433,standby``): its hosts, and its ports.

    libpq's form of a primary and its standbys, and the Redis Sentinels of ``redis+sentinel://``.

    A server that names no port has '' in the ports; a port that is not a number is a ValueError.
    """
    hosts, ports = [], []
    for server in servers.split(","):
        if server.startswith("["):  # an IPv6 address, [::1] or [::1]:5432
            host, _, rest = server[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port = server.partition(":")
        if port and not port.isdigit():
            raise ValueError(f"the port {port!r} of the server {server!r} is not a number")
        hosts.append(host)
        ports.append(port)
    return hosts, ports
