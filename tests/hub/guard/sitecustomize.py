"""The online test's connection guard: Python imports this at start-up when the folder is on PYTHONPATH.

In a process started with ``HOML16_GUARD_LOG`` set, every name lookup or connection that would leave the
machine raises ``OSError`` and appends a line to that file, so the online test fails on it. Loopback
addresses, ``localhost`` and Unix sockets pass. Names built on a loopback address (datasets probes
``datasets-server.<HF_ENDPOINT host>``) fail without a lookup and without a record: they cannot name
another machine.
"""

import ipaddress
import os
import socket

LOG = os.environ.get("HOML16_GUARD_LOG")


def _is_loopback(host):
    host = str(host).strip("[]").split("%")[0]
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _built_on_loopback(host):
    return "." in str(host) and _is_loopback(str(host).split(".", 1)[1])


def _blocked(what):
    with open(LOG, "a") as log:
        log.write(what + "\n")
    return OSError(f"homl16 online test: {what} blocked (only 127.0.0.1 may be reached)")


def _install():
    original_getaddrinfo, original_connect, original_connect_ex = (
        socket.getaddrinfo, socket.socket.connect, socket.socket.connect_ex)

    def getaddrinfo(host, *args, **kwargs):
        if host is None or _is_loopback(host if isinstance(host, str) else host.decode()):
            return original_getaddrinfo(host, *args, **kwargs)
        if _built_on_loopback(host):
            raise socket.gaierror(socket.EAI_NONAME, f"{host} is not looked up in the online test")
        raise _blocked(f"lookup {host}")

    def checked(address, family):
        if family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            raise _blocked(f"connect {address[0]}:{address[1]}")

    def connect(self, address):
        checked(address, self.family)
        return original_connect(self, address)

    def connect_ex(self, address):
        checked(address, self.family)
        return original_connect_ex(self, address)

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex


if LOG:
    _install()
