"""Security: bearer tokens for inference (reloaded when their file changes), the admin token
apart from them, mutual TLS, certificate checks at start, metrics on loopback.

Two servers (one per configuration): a plaintext one with inference and admin tokens, and a
mutual-TLS one. Certificates are made here with ``cryptography``.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import urllib.request
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from bnserve.client import AsyncClient, Client, ServerUnavailableError, UnauthenticatedError
from bnserve.proto import open_inference_pb2 as pb
from bnserve.proto import open_inference_pb2_grpc as pb_grpc
from bnserve.server.app import build_server
from bnserve.server.settings import ServerSettings
from support import onnx_graphs
from support.certificates import Authority, key_pem, new_key
from support.cli import BNSERVE, CliResult, run_cli
from support.server_thread import ServerThread
from support.waiting import wait_for

TOKEN_A, TOKEN_B, TOKEN_C = "token-a-0123456789", "token-b-abcdefghij", "token-c-klmnopqrst"
ADMIN = "admin-token-ZYXWVUT"
SECRETS = (TOKEN_A, TOKEN_B, TOKEN_C, ADMIN)
X = np.ones((2, 4), np.float32)
SERVICE = "inference.GRPCInferenceService"


def _free_port(host: str) -> int | None:
    try:
        with socket.socket() as sock:
            sock.bind((host, 0))
            return sock.getsockname()[1]
    except OSError:
        return None


# Metrics on a second loopback address show they follow metrics_host, not host (127.0.0.1).
METRICS_HOST = "127.0.0.2"
METRICS_PORT = _free_port(METRICS_HOST)


def rejected(method: str, reason: str) -> float:
    value = REGISTRY.get_sample_value("bnserve_rejected_calls_total",
                                      {"method": method, "reason": reason})
    return value or 0.0


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    onnx_graphs.linear_softmax(root / "linear" / "1" / "model.onnx")
    return root


@pytest.fixture(scope="module")
def secrets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("secrets")
    tokens, admin = folder / "tokens", folder / "admin.token"
    tokens.write_text(f"# inference clients\n{TOKEN_A}\n\n{TOKEN_B}\n")
    admin.write_text(ADMIN + "\n")
    return SimpleNamespace(tokens=tokens, admin=admin, folder=folder)


@pytest.fixture(scope="module")
def token_server(repository, secrets):
    settings = ServerSettings(repository=repository, auth_token_file=secrets.tokens,
                              admin_token_file=secrets.admin, metrics_port=METRICS_PORT,
                              metrics_host=METRICS_HOST)
    with ServerThread(settings) as running:
        yield running


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca, other = Authority("bnserve test CA"), Authority("another CA")
    (folder / "ca.crt").write_bytes(ca.cert_pem)
    paths = {"folder": folder, "ca": folder / "ca.crt", "ca_pem": ca.cert_pem}
    issued = {
        "server": ca.issue("server", hosts=("localhost", "127.0.0.1")),
        "client": ca.issue("client", client=True),
        "stranger": other.issue("stranger", client=True),
        "expired": ca.issue("server", hosts=("localhost",), valid_until=-_days(1),
                            valid_from=-_days(30)),
        "future": ca.issue("server", hosts=("localhost",), valid_from=_days(2)),
        "expiring": ca.issue("server", hosts=("localhost",), valid_until=_days(3)),
    }
    for name, leaf in issued.items():
        paths[name], paths[f"{name}_key"] = leaf.write(folder, name)
        paths[f"{name}_pems"] = (leaf.cert_pem, leaf.key_pem)
    (folder / "other.key").write_bytes(key_pem(new_key()))
    (folder / "garbage.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n"
                                         b"-----END CERTIFICATE-----\n")
    paths["other_key"], paths["garbage"] = folder / "other.key", folder / "garbage.pem"
    return SimpleNamespace(**paths)


def _days(n: float) -> timedelta:
    return timedelta(days=n)


@pytest.fixture(scope="module")
def mtls_server(repository, pki):
    settings = ServerSettings(repository=repository, tls_certificate=pki.server,
                              tls_private_key=pki.server_key, tls_client_ca=pki.ca)
    with ServerThread(settings) as running:
        yield running


# -- bearer tokens ---------------------------------------------------------------------------


def test_inference_calls_without_a_known_token_are_unauthenticated(token_server):
    before = rejected("ModelInfer", "unauthenticated")
    for token in (None, "not-a-token", TOKEN_A + "x"):
        with Client(token_server.address, auth_token=token, timeout=10) as client:
            for call in (client.is_live, client.is_ready, client.server_metadata,
                         lambda: client.is_model_ready("linear"), lambda: client.metadata("linear"),
                         lambda: client.infer("linear", {"input": X}),
                         lambda: client.model_config("linear"), client.statistics):
                with pytest.raises(UnauthenticatedError) as info:
                    call()
                assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
                assert "'authorization: Bearer <token>'" in info.value.details
                assert token is None or token not in info.value.details
    assert rejected("ModelInfer", "unauthenticated") - before == 3


def test_the_streaming_method_is_guarded_too(token_server):
    with grpc.insecure_channel(token_server.address) as channel:
        stream = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer
        with pytest.raises(grpc.RpcError) as info:
            list(stream(iter([pb.ModelInferRequest(model_name="linear")]), timeout=10))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        try:  # with a token it reaches the servicer (whatever that answers)
            list(stream(iter([pb.ModelInferRequest(model_name="linear")]), timeout=10,
                        metadata=(("authorization", f"Bearer {TOKEN_A}"),)))
        except grpc.RpcError as exc:
            assert exc.code() != grpc.StatusCode.UNAUTHENTICATED


async def test_each_token_and_the_admin_token_may_infer(token_server):
    for token in (TOKEN_A, TOKEN_B, ADMIN):
        with Client(token_server.address, auth_token=token, timeout=10) as client:
            assert client.is_ready()
            assert client.predict("linear", X).shape == (2, 3)
    async with AsyncClient(token_server.address, auth_token=TOKEN_B, timeout=10) as client:
        assert (await client.predict("linear", X)).shape == (2, 3)


def test_health_and_reflection_need_no_token(token_server):
    with grpc.insecure_channel(token_server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE, "linear"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        answer = next(reflection.ServerReflectionInfo(iter([request]), timeout=10))
        assert SERVICE in {s.name for s in answer.list_services_response.service}


def test_the_repository_api_needs_the_admin_token_not_an_inference_one(token_server):
    before = rejected("RepositoryIndex", "permission_denied")
    with Client(token_server.address, auth_token=TOKEN_A, timeout=10) as inference:
        with pytest.raises(UnauthenticatedError) as info:
            inference.repository_index()
        assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
        assert "admin token" in info.value.details
    assert rejected("RepositoryIndex", "permission_denied") - before == 1
    for token in (None, "wrong"):
        with Client(token_server.address, admin_token=token, timeout=10) as client:
            with pytest.raises(UnauthenticatedError) as info:
                client.repository_index()
            assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    with Client(token_server.address, admin_token=ADMIN, timeout=10) as admin:
        assert [(r.name, r.state) for r in admin.repository_index()] == [("linear", "READY")]


def _answers(address: str, token: str) -> bool:
    with Client(address, auth_token=token, timeout=10) as client:
        try:
            return client.is_live()
        except UnauthenticatedError:
            return False


def test_a_rewritten_token_file_takes_effect_within_seconds(token_server, secrets, caplog):
    caplog.set_level(logging.DEBUG)
    address = token_server.address
    try:
        secrets.tokens.write_text(f"{TOKEN_A}\n{TOKEN_C}\n")  # in place: B out, C in
        wait_for(lambda: _answers(address, TOKEN_C) and not _answers(address, TOKEN_B),
                 timeout=5, what="the rewritten token file")
        assert _answers(address, TOKEN_A)
    finally:
        replacement = secrets.folder / "tokens.new"  # atomically, as a secret mount does
        replacement.write_text(f"{TOKEN_A}\n{TOKEN_B}\n")
        os.replace(replacement, secrets.tokens)
        wait_for(lambda: _answers(address, TOKEN_B) and not _answers(address, TOKEN_C),
                 timeout=5, what="the token file put back")
    assert "changed: 2 token(s)" in caplog.text
    assert_no_secret(caplog.text)


def test_an_unusable_token_file_keeps_the_last_tokens_and_warns_once(token_server, secrets,
                                                                     caplog):
    caplog.set_level(logging.INFO, logger="bnserve")
    address = token_server.address

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "auth token file" in r.getMessage()]

    try:
        secrets.tokens.write_text("# nothing here\n")
        wait_for(lambda: _answers(address, TOKEN_A) and warnings(), timeout=5,
                 what="the warning about the empty token file")
        assert _answers(address, TOKEN_B)
        assert "holds no token" in warnings()[0] and "keeping the 2 token(s)" in warnings()[0]
    finally:
        secrets.tokens.write_text(f"{TOKEN_B}\n{TOKEN_A}\n")
        # The file is looked at on the request path: keep calling until it is read again.
        wait_for(lambda: _answers(address, TOKEN_A) and "changed: 2 token(s)" in caplog.text,
                 timeout=5, what="the token file put back")
    assert len(warnings()) == 1  # not one per second while it stayed empty
    assert_no_secret(caplog.text)


def test_tokens_never_reach_the_logs(token_server, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    for token in (TOKEN_A, ADMIN, "Bearer " + TOKEN_B, TOKEN_C):
        with Client(token_server.address, auth_token=token, timeout=10) as client:
            try:
                client.predict("linear", X)
                client.repository_index()
            except UnauthenticatedError:
                pass
    captured = capfd.readouterr()
    assert_no_secret(caplog.text + captured.out + captured.err)


def test_the_command_line_client_sends_the_token_from_a_file(token_server, secrets):
    def health(*flags: str) -> CliResult:
        return run_cli("health", "--address", token_server.address, *flags)

    assert health("--auth-token-file", str(secrets.tokens)).stdout.strip() == "ready"
    refused = health()
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr


# -- metrics ----------------------------------------------------------------------------------


@pytest.mark.skipif(METRICS_PORT is None, reason=f"cannot bind {METRICS_HOST}")
def test_metrics_listen_on_metrics_host_only(token_server):
    assert ServerSettings().metrics_host == "127.0.0.1"
    text = urllib.request.urlopen(f"http://{METRICS_HOST}:{METRICS_PORT}/metrics",
                                  timeout=10).read().decode()
    assert "bnserve_rejected_calls_total" in text
    with pytest.raises(ConnectionRefusedError):  # not on the gRPC host
        socket.create_connection(("127.0.0.1", METRICS_PORT), timeout=5).close()


# -- mutual TLS -------------------------------------------------------------------------------


def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_ca(mtls_server, pki):
    address = mtls_server.address  # 127.0.0.1, in the server certificate's subjectAltName
    cert, key = pki.client_pems
    with Client(address, root_certificates=pki.ca_pem, certificate_chain=cert, private_key=key,
                timeout=10) as client:
        assert client.predict("linear", X).shape == (2, 3)
    stranger_cert, stranger_key = pki.stranger_pems
    refused = (
        {"root_certificates": pki.ca_pem},  # no client certificate
        {"root_certificates": pki.ca_pem, "certificate_chain": stranger_cert,
         "private_key": stranger_key},  # one from another CA
        {},  # plaintext
    )
    for options in refused:
        with Client(address, timeout=5, **options) as client:
            with pytest.raises(ServerUnavailableError):  # the handshake fails: no call is made
                client.is_live()


def test_the_command_line_client_presents_a_certificate(mtls_server, pki):
    address = mtls_server.address
    tls = ["--tls-ca", str(pki.ca), "--timeout", "10"]
    ready = run_cli("health", "--address", address, *tls, "--tls-certificate", pki.client,
                    "--tls-private-key", pki.client_key)
    assert ready.returncode == 0 and ready.stdout.strip() == "ready", ready.stderr


# -- refused starts ---------------------------------------------------------------------------


def _tls_settings(repository, pki, cert, key, **extra) -> ServerSettings:
    return ServerSettings(repository=repository, host="127.0.0.1", port=0,
                          tls_certificate=getattr(pki, cert), tls_private_key=getattr(pki, key),
                          **extra)


@pytest.mark.parametrize(("cert", "key", "extra", "problem"), [
    ("expired", "expired_key", {}, "expired.crt expired on "),
    ("future", "future_key", {}, "future.crt is not valid before "),
    ("server", "other_key", {}, "other.key does not match the certificate"),
    ("garbage", "server_key", {}, "garbage.pem holds no valid PEM certificate"),
    ("server", "garbage", {}, "garbage.pem holds no unencrypted PEM private key"),
    ("server", "server_key", {"tls_client_ca": "garbage"}, "client CA file"),
    ("server", "server_key", {"tls_client_ca": "missing"}, "cannot read the TLS client CA file"),
])
async def test_unusable_tls_files_refuse_the_start(repository, pki, cert, key, extra, problem):
    extra = {name: pki.folder / "missing.pem" if value == "missing" else getattr(pki, value)
             for name, value in extra.items()}
    with pytest.raises(ValueError) as info:
        build_server(_tls_settings(repository, pki, cert, key, **extra))
    assert problem in str(info.value)


async def test_half_a_tls_setup_and_shared_tokens_refuse_the_start(repository, pki, secrets, tmp_path):
    with pytest.raises(ValueError, match="needs tls_certificate and tls_private_key"):
        build_server(ServerSettings(repository=repository, port=0, tls_client_ca=pki.ca))
    shared = tmp_path / "tokens"
    shared.write_text(f"{TOKEN_A}\n{ADMIN}\n")
    with pytest.raises(ValueError, match="holds the admin token") as info:
        build_server(ServerSettings(repository=repository, port=0, auth_token_file=shared,
                                    admin_token_file=secrets.admin))
    assert_no_secret(str(info.value))
    shared.write_text(f"{TOKEN_A}\nhas a space\n")
    with pytest.raises(ValueError, match="line 2 is not a token") as info:
        build_server(ServerSettings(repository=repository, port=0, auth_token_file=shared))


async def test_a_certificate_near_its_end_is_logged(repository, pki, caplog):
    server = build_server(_tls_settings(repository, pki, "expiring", "expiring_key"))
    await server.grpc_server.stop(None)
    assert any(r.levelno == logging.WARNING and "expiring.crt expires on" in r.getMessage()
               for r in caplog.records)


def test_serve_refuses_bad_certificates_in_one_line_with_exit_1(repository, pki):
    cases = {"expired": ("expired", "expired_key"), "does not match": ("server", "other_key"),
             "holds no valid PEM certificate": ("garbage", "server_key")}
    runs = {
        problem: subprocess.Popen(
            [*BNSERVE, "serve", "--repository", str(repository), "--host", "127.0.0.1",
             "--port", "0", "--tls-certificate", str(getattr(pki, cert)),
             "--tls-private-key", str(getattr(pki, key))],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for problem, (cert, key) in cases.items()
    }
    for problem, process in runs.items():
        _, err = process.communicate(timeout=60)
        cert, key = cases[problem]
        assert process.returncode == 1, err
        assert "Traceback" not in err and "is the port taken" not in err
        named = Path(getattr(pki, key if problem == "does not match" else cert)).name
        line = [text for text in err.splitlines() if text.startswith("bnserve serve:")]
        assert len(line) == 1 and problem in line[0] and named in line[0], err
