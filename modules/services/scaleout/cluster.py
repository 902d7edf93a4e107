"""Joining or starting the Ray cluster, with the safety rules around it.

Ray's ports run whatever code a connected client sends: they are for a trusted LAN behind a
firewall. So: an address must be private or loopback (a public one needs ``--ray-allow-public``),
``0.0.0.0`` is refused (name the LAN interface), and Ray's token authentication stays on
(``RAY_AUTH_MODE=token``; the head makes the token, every joining host needs a copy). Ray's own
servers still listen on every interface of a machine: the firewall is what keeps them off other
networks, and the docs say so.
"""

from __future__ import annotations

import atexit
import ipaddress
import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from modules.errors import ConfigError

log = logging.getLogger(__name__)
DEFAULT_PORT = 6379
AUTH_MODE = "RAY_AUTH_MODE"
_START_SECONDS = 60.0


@dataclass(frozen=True)
class RayAddress:
    """``auto`` (the cluster this machine belongs to) or ``HOST:PORT`` of a head."""

    host: str | None
    port: int = DEFAULT_PORT

    @staticmethod
    def parse(text: str) -> RayAddress:
        text = text.strip()
        if text == "auto":
            return RayAddress(None)
        host, _, port = text.rpartition(":") if ":" in text else (text, "", str(DEFAULT_PORT))
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError(f"Ray address must be 'auto' or HOST:PORT (e.g. 192.168.1.10:6379), got {text!r}")
        return RayAddress(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return "auto" if self.host is None else f"{self.host}:{self.port}"


def _addresses_of(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as exc:
        raise ConfigError(f"Cannot resolve the Ray host {host!r}: {exc}") from exc
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def check_address(host: str, allow_public: bool) -> None:
    """ConfigError unless ``host`` is a private (LAN) or loopback address, or public use is allowed."""
    addresses = _addresses_of(host)
    if any(a.is_unspecified for a in addresses):
        raise ConfigError(f"Ray address {host}: name the LAN interface to use (e.g. 192.168.1.10), not "
                          "every interface.")
    public = [str(a) for a in addresses if not (a.is_private or a.is_loopback or a.is_link_local)]
    if public and not allow_public:
        raise ConfigError(f"Ray address {host} is public ({', '.join(public)}). Ray's ports run any code a client "
                          "sends: use a LAN address behind a firewall, or pass --ray-allow-public if this network "
                          "really is private to you.")
    if public:
        log.warning("Ray on a public address (%s), as --ray-allow-public asks: anyone who reaches its ports and "
                    "holds the token can run code on every machine of the cluster.", ", ".join(public))


def is_local_address(host: str) -> bool:
    """Whether ``host`` is an address of this machine (so a head there would run here)."""
    try:
        addresses = {str(a) for a in _addresses_of(host)}
    except ConfigError:
        return False
    if any(ipaddress.ip_address(a).is_loopback for a in addresses):
        return True
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind((address, 0))  # binding succeeds only for this machine's own addresses
                return True
            except OSError:
                continue
    return False


def lan_address_towards(host: str, port: int) -> str:
    """This machine's address on the interface that reaches ``host`` (what a joining node advertises)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((host, port))  # UDP: picks the route, sends nothing
        return str(probe.getsockname()[0])


def answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _token_present() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return Path(path).is_file()


def require_token_auth(create: bool) -> None:
    """Keep Ray's token authentication on for this process and the Ray processes it starts. The head
    (``create``) makes a token when there is none; a joining host must have been given a copy."""
    mode = os.environ.get(AUTH_MODE, "token").lower()
    if mode == "disabled":
        log.warning("RAY_AUTH_MODE=disabled: Ray's token authentication is off; anyone who reaches the cluster's "
                    "ports can run code on its machines.")
        return
    os.environ[AUTH_MODE] = "token"
    if _token_present():
        return
    if not create:
        raise ConfigError("Ray's token authentication is on and this machine has no token. Copy ~/.ray/auth_token "
                          "from the head machine to this one (or set RAY_AUTH_TOKEN).")
    subprocess.run(_ray_cli("get-auth-token", "--generate"), check=True, stdout=subprocess.DEVNULL)
    log.info("Made a Ray authentication token in ~/.ray/auth_token; copy it to every worker host")


def _ray_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ray.scripts.scripts", *args]


def start_ray_node(address: RayAddress, node_ip: str, head: bool) -> subprocess.Popen[bytes]:
    """A Ray head (or a node joining ``address``) owned by this process, as ``ray start --block``;
    returns once it answers."""
    assert address.host is not None
    args = ["start", "--block", f"--node-ip-address={node_ip}", "--include-dashboard=false", "--disable-usage-stats"]
    args += [f"--port={address.port}", "--head"] if head else [f"--address={address}"]
    log.info("Starting a Ray %s at %s", "head" if head else "node", address if head else node_ip)
    process = subprocess.Popen(_ray_cli(*args))
    atexit.register(stop_ray_node, process)  # also when startup fails or Ctrl+C comes before the server runs
    deadline = time.monotonic() + _START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(f"Ray could not start (exit code {process.returncode}); see the messages above.")
        if not head or answers(address.host, address.port):
            time.sleep(2.0 if not head else 0.5)  # a joining node registers with the head first
            return process
        time.sleep(0.25)
    process.terminate()
    raise ConfigError(f"Ray did not start at {address} within {_START_SECONDS:.0f} s.")


def stop_ray_node(process: subprocess.Popen[bytes] | None, timeout: float = 40.0) -> None:
    """End a node started by :func:`start_ray_node` (Ray drains it, then stops its processes)."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()


def init_ray(address: str, namespace: str, attempts: int = 1) -> None:
    """``ray.init`` as a driver of the cluster at ``address``; retried while a just-started node registers."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(address=address, namespace=namespace, log_to_driver=False, include_dashboard=False)
            return
        except ConnectionError as exc:
            if attempt == attempts:
                raise ConfigError(f"Cannot join the Ray cluster at {address}: {exc}") from exc
            time.sleep(2.0)


def connect_front(address: RayAddress, allow_public: bool, namespace: str) -> subprocess.Popen[bytes] | None:
    """Connect the front process to its cluster. ``HOST:PORT`` naming this machine with nothing there
    starts the head (returned, for :func:`stop_ray_node` at exit); ``auto`` joins the cluster this
    machine already belongs to. Call it before anything imports Ray: Ray reads RAY_AUTH_MODE once."""
    head_here = False
    if address.host is not None:
        check_address(address.host, allow_public)
        head_here = not answers(address.host, address.port)
        if head_here and not is_local_address(address.host):
            raise ConfigError(f"No Ray cluster answers at {address}. Start Atelier on that machine first (its "
                              f"--ray-address {address} starts the head), or name this machine's LAN address.")
    loaded = sys.modules.get("ray")
    if loaded is not None and loaded.is_initialized():  # the caller (a test, an embedding app) connected already
        return None
    require_token_auth(create=head_here)
    head = start_ray_node(address, address.host, head=True) if head_here and address.host else None
    try:
        init_ray(str(address), namespace, attempts=5)
    except ConfigError:
        stop_ray_node(head)
        raise
    log.info("Connected to the Ray cluster at %s; workers join with: python app.py worker --join %s", address, address)
    return head
