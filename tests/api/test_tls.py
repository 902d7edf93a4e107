"""--tls-keyfile/--tls-certfile serve HTTPS (a self-signed certificate made for the test)."""

from __future__ import annotations

import shutil
import ssl
import subprocess

import httpx
import pytest

from tests.server_process import start_server, stop_server


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_https_with_a_certificate(tmp_path, tiny_models) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    proc, server = start_server(tmp_path / "data", tmp_path / "empty", "--nowebui", "--tls-keyfile", str(key),
                                "--tls-certfile", str(cert), ready_path=None)
    try:
        url = server.url.replace("http://", "https://")
        response = httpx.get(f"{url}/sdapi/v1/samplers", verify=ssl.create_default_context(cafile=str(cert)))
        assert response.status_code == 200 and response.json()[0]["name"] == "DPM++ 2M"
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{server.url}/sdapi/v1/samplers", timeout=5)  # plain HTTP is not served
    finally:
        stop_server(proc)
