"""The `bnserve` command as a user runs it: serve, health, predict, SIGTERM."""

from __future__ import annotations

import time

import numpy as np
import pytest

from support.cli import run_cli
from support.subprocess_server import SubprocessServer


@pytest.fixture(scope="module")
def served(digits_repository):
    with SubprocessServer(digits_repository, "--max-batch-size", "32") as server:
        yield server


def test_help_lists_every_subcommand():
    out = run_cli("--help").stdout
    for command in ("train", "export", "compare", "recalibrate", "serve", "predict", "health",
                    "drift"):
        assert command in out
    assert "--repository" in run_cli("serve", "--help").stdout
    assert "--input" in run_cli("predict", "--help").stdout


def test_health(served):
    assert run_cli("health", "--address", served.address).stdout.strip() == "ready"
    assert run_cli("health", "--address", served.address, "--model", "digits").returncode == 0
    missing = run_cli("health", "--address", served.address, "--model", "nope")
    assert missing.returncode == 1
    down = run_cli("health", "--address", "127.0.0.1:1", "--timeout", "1")
    assert down.returncode == 1


def test_health_without_an_address_checks_the_port_bnserve_port_names(served):
    # What the image's HEALTHCHECK runs: `-e BNSERVE_PORT=...` moves the check with the server.
    here = {"BNSERVE_PORT": str(served.port)}
    assert run_cli("health", env=here).stdout.strip() == "ready"
    assert run_cli("health", "--model", "digits", env={**here, "BNSERVE_HOST": "0.0.0.0"}).returncode == 0
    assert run_cli("health", "--live", env=here).stdout.strip() == "live"
    elsewhere = run_cli("health", "--timeout", "1", env={"BNSERVE_PORT": "1"})
    assert elsewhere.returncode == 1 and elsewhere.stdout.strip() == "not ready"
    not_live = run_cli("health", "--live", "--timeout", "1", env={"BNSERVE_PORT": "1"})
    assert not_live.returncode == 1 and "not live" in not_live.stderr


def test_health_refuses_a_port_it_cannot_check():
    for port, says in (("0", "BNSERVE_PORT=0 lets the server pick a free port"),
                       ("eighty", "BNSERVE_PORT='eighty' is not a port number")):
        result = run_cli("health", env={"BNSERVE_PORT": port})
        assert result.returncode == 2 and says in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    both = run_cli("health", "--live", "--model", "digits")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_health_speaks_tls_when_the_server_does(digits_repository, tmp_path):
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    # A name other than 127.0.0.1: the health check verifies the certificate's own name.
    certificate = authority.issue_cert("bnserve.example.com")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in certificate.cert_chain_pems))
    key_file.write_bytes(certificate.private_key_pem.bytes())
    ca_file.write_bytes(authority.cert_pem.bytes())
    with SubprocessServer(digits_repository, "--tls-certificate", str(cert_file),
                          "--tls-private-key", str(key_file)) as server:
        port = str(server.port)
        # As in the image: BNSERVE_TLS_CERTIFICATE set means TLS, trusting that certificate.
        local = run_cli("health", env={"BNSERVE_PORT": port,
                                       "BNSERVE_TLS_CERTIFICATE": str(cert_file)})
        assert local.returncode == 0, local.stderr
        plaintext = run_cli("health", "--timeout", "2", env={"BNSERVE_PORT": port})
        assert plaintext.returncode == 1
        explicit = run_cli("health", "--address", server.address, "--tls-ca", str(ca_file),
                           "--tls-server-name", "bnserve.example.com", env={})
        assert explicit.returncode == 0, explicit.stderr
        wrong_name = run_cli("health", "--address", server.address, "--tls-ca",
                             str(ca_file), "--timeout", "2", env={})
        assert wrong_name.returncode == 1  # the certificate does not name 127.0.0.1


def test_predict_prints_and_saves(served, digits_data, tmp_path):
    images, labels = digits_data
    np.save(tmp_path / "x.npy", images[:5])
    printed = run_cli("predict", "--model", "digits", "--input", str(tmp_path / "x.npy"),
                      "--address", served.address).stdout
    assert "argmax per row:" in printed
    saved = run_cli("predict", "--model", "digits", "--input", str(tmp_path / "x.npy"),
                    "--address", served.address, "--output", str(tmp_path / "y.npy"))
    assert "saved float32 [5, 10]" in saved.stdout
    probabilities = np.load(tmp_path / "y.npy")
    assert (probabilities.argmax(axis=1) == labels[:5]).mean() >= 0.8


def test_predict_reports_errors_without_a_traceback(served, tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((2, 3), np.float32))
    result = run_cli("predict", "--model", "digits", "--input", str(tmp_path / "bad.npy"),
                     "--address", served.address)
    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr and "Traceback" not in result.stderr


def test_sigterm_stops_the_server_cleanly(digits_repository):
    with SubprocessServer(digits_repository) as server:
        assert run_cli("health", "--address", server.address).returncode == 0
        started = time.monotonic()
        code = server.terminate()
        elapsed = time.monotonic() - started
    assert code == 0, server.log
    assert elapsed < 10, f"took {elapsed:.1f}s to stop"
    assert "draining" in server.log and "stopped" in server.log
    assert "Traceback" not in server.log


def test_serve_start_up_errors_are_one_clear_line(served, tmp_path):
    taken = run_cli("serve", "--repository", str(tmp_path), "--host", "127.0.0.1",
                    "--port", str(served.port))
    assert taken.returncode == 1
    assert f"cannot listen on 127.0.0.1:{served.port} (is the port taken?)" in taken.stderr
    missing = run_cli("serve", "--repository", str(tmp_path / "nope"), "--port", "0")
    assert missing.returncode == 1 and "is not a directory" in missing.stderr
    invalid = run_cli("serve", "--repository", str(tmp_path), "--port", "70000")
    assert invalid.returncode == 2 and "port: Input should be less than or equal to 65535" in (
        invalid.stderr
    )
    for result in (taken, missing, invalid):
        assert "Traceback" not in result.stderr


def test_serve_refuses_an_unavailable_device_at_start(digits_repository):
    result = run_cli("serve", "--repository", str(digits_repository), "--port", "0",
                     "--device", "cuda")
    assert result.returncode == 1
    assert "no CUDAExecutionProvider" in result.stderr and "Traceback" not in result.stderr


def test_extras_follow_their_nested_extras_and_accept_the_gpu_build(monkeypatch):
    """`server` and `cuda` share `bnserve[server-common]`: a command asking for the server extra
    checks all of it, and onnxruntime-gpu (the cuda extra) stands in for onnxruntime."""
    from importlib import metadata

    from bnserve.cli import extras

    server = extras.extra_requirements()["server"]
    assert {"onnxruntime", "grpcio-health-checking", "onnxscript"} <= set(server)
    real = metadata.distribution

    def without_cpu_build(name):
        if name == "onnxruntime":
            raise metadata.PackageNotFoundError(name)
        if name == "onnxruntime-gpu":
            return real("onnx")  # any installed distribution
        return real(name)

    monkeypatch.setattr(extras.metadata, "distribution", without_cpu_build)
    assert extras.missing_for("server") == []
