"""The request guard's parts, one rule at a time: Host parsing and the allow-list, same-origin,
the limiter's keys, log escaping, and the password kept out of the process title."""

from __future__ import annotations

import logging

import pytest

from modules.cmd_args import redacted_argv
from modules.web.hosts import HostPolicy, host_name_of, is_loopback
from modules.web.limiter import FailureLimiter
from modules.web.log_safety import EscapingFilter, printable
from modules.web.origin import cross_site, same_origin


@pytest.mark.parametrize(("header", "name"), [
    ("localhost:7860", "localhost"), ("LOCALHOST", "localhost"), ("[::1]:7860", "::1"), ("127.0.0.1", "127.0.0.1"),
    ("example.org.", "example.org"), ("a/b", None), ("x:y", None), ("[::1", None), ("", None), ("u@host", None)])
def test_host_header_parsing(header: str, name: str | None) -> None:
    assert host_name_of(header) == name


def test_loopback_names() -> None:
    assert all(is_loopback(n) for n in ("localhost", "127.0.0.1", "127.8.9.10", "::1", "app.localhost"))
    assert not any(is_loopback(n) for n in ("localhost.evil.example", "10.0.0.1", "evil", "0.0.0.0"))


def test_host_policy() -> None:
    local = HostPolicy()
    assert local.allows("localhost", "127.0.0.1") and not local.allows("192.168.1.5", "192.168.1.5")
    lan = HostPolicy(listen=True, machine_names=frozenset({"studio"}), patterns=frozenset({".example.org"}))
    assert lan.allows("studio", None) and lan.allows("192.168.1.5", "192.168.1.5")
    assert lan.allows("gpu.example.org", None) and not lan.allows("example.org.evil", None)
    assert not lan.allows("evil.example", "192.168.1.5") and not lan.allows("evil", "evil")


def test_same_origin() -> None:
    assert same_origin("http://127.0.0.1:7860", "127.0.0.1:7860")
    assert same_origin("https://atelier.example", "atelier.example")
    assert not same_origin("http://127.0.0.1:7861", "127.0.0.1:7860")
    assert not same_origin("null", "127.0.0.1:7860") and not same_origin("file://", "")
    assert cross_site({"origin": "http://a.example", "host": "b:1"}, frozenset({"http://a.example"})) is None
    assert cross_site({"sec-fetch-site": "cross-site", "host": "b"}, frozenset()) is not None
    assert cross_site({"host": "b"}, frozenset()) is None  # a program, not a page


def test_limiter_counts_addresses_and_user_names_apart() -> None:
    now = [0.0]
    limiter = FailureLimiter(max_failures=2, window_seconds=10, clock=lambda: now[0])
    limiter.failed("10.0.0.1", "Alice")
    limiter.failed("10.0.0.2", "alice")
    assert limiter.retry_after("10.0.0.3", "ALICE") is not None  # the name, from anywhere
    assert limiter.retry_after("10.0.0.3", "bob") is None
    assert limiter.retry_after("10.0.0.1") is None  # one failure from that address
    now[0] = 11.0
    assert limiter.retry_after("10.0.0.3", "alice") is None


def test_log_escaping_filter() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "path %s from %s", ("/a\nFORGED\r\x1b[31m", 5), None)
    EscapingFilter().filter(record)
    assert record.getMessage() == "path /a\\nFORGED\\r\\x1b[31m from 5"
    assert printable("x" * 500, limit=10) == "x" * 10 + "..."


def test_the_process_title_hides_every_secret() -> None:
    argv = ["--listen", "--gradio-auth", "a:pw1", "--api-auth=b:pw2", "--port", "1"]
    assert redacted_argv(argv) == ["--listen", "--gradio-auth", "<redacted>", "--api-auth=<redacted>", "--port", "1"]
