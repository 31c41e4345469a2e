"""Federation certificates and keys (fast, no network beyond an in-process TLS handshake on 127.0.0.1): SANs,
chain verification, key formats Flower accepts, file modes, and errors that name the file or host."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from fedsim.deploy.certs import (
    FederationError,
    Layout,
    check_federation,
    check_superlink_files,
    check_supernode_files,
    classify_hosts,
    find_ca_cert,
    init_federation,
    split_host_port,
)

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs") / "fed"
    init_federation(d, "10.200.0.1", num_nodes=3, port=9443, sans=["fl.example.org", "SuperLink.Internal", "fd00::1"])
    return d


def _sans(cert_path: Path) -> tuple[list[str], list[str]]:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ext.get_values_for_type(x509.DNSName), [str(i) for i in ext.get_values_for_type(x509.IPAddress)]


def test_layout_and_manifest(fed: Path) -> None:
    lay = Layout(fed)
    for p in (lay.ca_cert, lay.ca_key, lay.server_cert, lay.server_key, lay.superlink_dir / "ca.crt",
              lay.superlink_dir / "superlink.json", lay.manifest, fed / "DISTRIBUTE.md"):
        assert p.is_file(), p
    manifest = json.loads(lay.manifest.read_text())
    assert manifest["superlink"]["address"] == "10.200.0.1:9443"
    assert [n["name"] for n in manifest["nodes"]] == ["node-0", "node-1", "node-2"]
    assert [n["partition_id"] for n in manifest["nodes"]] == [0, 1, 2]
    for n in manifest["nodes"]:
        d = lay.node_dir(n["name"])
        assert {p.name for p in d.iterdir()} == {"ca.crt", "node.key", "node.pub", "node.json"}
        info = json.loads((d / "node.json").read_text())
        assert info == {"name": n["name"], "partition_id": n["partition_id"], "num_partitions": 3,
                        "superlink": "10.200.0.1:9443"}
        assert (d / "node.pub").read_text().strip() == n["public_key"]
    text = (fed / "DISTRIBUTE.md").read_text()
    assert "ca/ca.key" in text and "offline" in text
    assert all(f"supernodes/node-{k}/" in text for k in range(3))
    assert check_federation(fed)["superlink"]["sans"]


def test_sans_are_exactly_the_given_hosts_plus_loopback(fed: Path) -> None:
    dns, ips = _sans(Layout(fed).server_cert)
    assert sorted(dns) == ["fl.example.org", "localhost", "superlink.internal"]
    assert sorted(ips) == ["10.200.0.1", "127.0.0.1", "fd00::1"]
    assert not any("*" in d for d in dns)


def test_no_loopback(tmp_path: Path) -> None:
    init_federation(tmp_path / "f", "fl.example.org", num_nodes=1, include_loopback=False)
    dns, ips = _sans(Layout(tmp_path / "f").server_cert)
    assert dns == ["fl.example.org"] and ips == []


def test_chain_verifies_for_every_san_and_only_those(fed: Path) -> None:
    lay = Layout(fed)
    ca = x509.load_pem_x509_certificate(lay.ca_cert.read_bytes())
    leaf = x509.load_pem_x509_certificate(lay.server_cert.read_bytes())
    store = Store([ca])
    import ipaddress

    for name in ("fl.example.org", "superlink.internal", "localhost"):
        PolicyBuilder().store(store).build_server_verifier(x509.DNSName(name)).verify(leaf, [])
    for ip in ("10.200.0.1", "127.0.0.1", "fd00::1"):
        PolicyBuilder().store(store).build_server_verifier(x509.IPAddress(ipaddress.ip_address(ip))).verify(leaf, [])
    from cryptography.x509.verification import VerificationError

    with pytest.raises(VerificationError):
        PolicyBuilder().store(store).build_server_verifier(x509.DNSName("other.example.org")).verify(leaf, [])
    with pytest.raises(VerificationError):
        other_ip = x509.IPAddress(ipaddress.ip_address("10.200.0.2"))
        PolicyBuilder().store(store).build_server_verifier(other_ip).verify(leaf, [])


def _handshake(server_dir: Path, client_ca: Path, server_hostname: str) -> None:
    """A real TLS handshake on 127.0.0.1 (OpenSSL, as httpx/uvicorn use), server cert from `server_dir`."""
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(server_dir / "server.crt", server_dir / "server.key")
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        lsock.settimeout(5)

        def serve() -> None:
            try:
                conn, _ = lsock.accept()
                with sctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        cctx = ssl.create_default_context(cafile=str(client_ca))
        try:
            with socket.create_connection(lsock.getsockname(), timeout=5) as raw:
                with cctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                    tls.sendall(b"x")
        finally:
            t.join(5)


def test_tls_handshake_with_openssl(fed: Path, tmp_path: Path) -> None:
    lay = Layout(fed)
    for host in ("10.200.0.1", "fl.example.org", "localhost", "127.0.0.1"):
        _handshake(lay.superlink_dir, lay.node_dir("node-0") / "ca.crt", host)
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(lay.superlink_dir, lay.ca_cert, "10.200.0.9")
    init_federation(tmp_path / "other", "10.200.0.1", num_nodes=1)
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        _handshake(lay.superlink_dir, Layout(tmp_path / "other").ca_cert, "10.200.0.1")


def test_private_key_modes(fed: Path) -> None:
    lay = Layout(fed)
    keys = [lay.ca_key, lay.server_key, *(lay.node_dir(f"node-{k}") / "node.key" for k in range(3))]
    for key in keys:
        assert key.stat().st_mode & 0o777 == 0o600, key
        assert key.parent.stat().st_mode & 0o777 == 0o700, key.parent
    for public in (lay.ca_cert, lay.server_cert, lay.node_dir("node-0") / "node.pub"):
        assert public.stat().st_mode & 0o777 == 0o644


def test_node_keys_in_the_format_flower_reads(fed: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    d = Layout(fed).node_dir("node-1")
    private = serialization.load_ssh_private_key((d / "node.key").read_bytes(), None)  # as flower-supernode does
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
    assert (d / "node.key").read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert (d / "node.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    assert try_load_public_key(d / "node.pub") == public_key_to_bytes(private.public_key())
    info = check_supernode_files(d / "ca.crt", d / "node.key")
    assert info["public_key"] == (d / "node.pub").read_text().strip()


def test_distinct_keys(fed: Path) -> None:
    keys = {(Layout(fed).node_dir(f"node-{k}") / "node.pub").read_text() for k in range(3)}
    assert len(keys) == 3


@pytest.mark.parametrize(
    "hosts, match",
    [
        (["*.example.org"], "wildcard"),
        (["0.0.0.0"], "bind-all"),
        (["::"], "bind-all"),
        (["fl.example.org:8000"], "without a port"),
        (["https://fl.example.org"], "without a port"),
        ([""], "empty"),
        (["bad_name.example.org"], "not a valid DNS"),
        (["-x.example.org"], "not a valid DNS"),
    ],
)
def test_bad_hosts(hosts: list[str], match: str) -> None:
    with pytest.raises(FederationError, match=match):
        classify_hosts(hosts)


def test_classify_hosts() -> None:
    hosts = ["A.Example.org.", "10.0.0.1", "[fd00::1]", "a.example.org"]
    assert classify_hosts(hosts) == (["a.example.org"], ["10.0.0.1", "fd00::1"])
    assert split_host_port("[fd00::1]:8000") == ("fd00::1", 8000)
    for bad in ("host", "host:0", "host:x", ":80", "host:70000"):
        with pytest.raises(FederationError, match="HOST:PORT"):
            split_host_port(bad)


def test_bad_init_arguments(tmp_path: Path) -> None:
    with pytest.raises(FederationError, match="at least one SuperNode"):
        init_federation(tmp_path / "a", "10.0.0.1", num_nodes=0)
    with pytest.raises(FederationError, match="distinct"):
        init_federation(tmp_path / "a", "10.0.0.1", num_nodes=2, node_names=["x", "x"])
    with pytest.raises(FederationError, match="node name"):
        init_federation(tmp_path / "a", "10.0.0.1", num_nodes=1, node_names=["../x"])
    with pytest.raises(FederationError, match="port"):
        init_federation(tmp_path / "a", "10.0.0.1", num_nodes=1, port=70000)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep").write_text("x")
    with pytest.raises(FederationError, match="not empty"):
        init_federation(tmp_path / "b", "10.0.0.1", num_nodes=1)
    init_federation(tmp_path / "b", "10.0.0.1", num_nodes=1, force=True)
    assert (tmp_path / "b" / "keep").exists() and (tmp_path / "b" / "federation.json").exists()


# -------------------------------------------------------------------------------------------- validation


def _copy(fed: Path, dst: Path) -> Layout:
    shutil.copytree(fed, dst)
    return Layout(dst)


def test_missing_files_are_named(fed: Path, tmp_path: Path) -> None:
    lay = _copy(fed, tmp_path / "f")
    lay.server_key.unlink()
    with pytest.raises(FederationError, match=f"SuperLink private key not found: {lay.server_key}"):
        check_superlink_files(lay.superlink_dir / "ca.crt", lay.server_cert, lay.server_key)
    (lay.node_dir("node-0") / "ca.crt").unlink()
    with pytest.raises(FederationError, match=f"CA certificate not found: {lay.node_dir('node-0') / 'ca.crt'}"):
        check_supernode_files(lay.node_dir("node-0") / "ca.crt", lay.node_dir("node-0") / "node.key")
    with pytest.raises(FederationError, match="SuperNode private key not found"):
        check_supernode_files(lay.ca_cert, lay.node_dir("nope") / "node.key")


def test_cert_of_another_ca_is_named(fed: Path, tmp_path: Path) -> None:
    init_federation(tmp_path / "other", "10.200.0.1", num_nodes=1)
    other = Layout(tmp_path / "other")
    lay = Layout(fed)
    with pytest.raises(FederationError, match=rf"certificate {other.server_cert} is not signed by the CA {lay.ca_cert}"):
        check_superlink_files(lay.ca_cert, other.server_cert, other.server_key)


def test_key_not_matching_cert(fed: Path, tmp_path: Path) -> None:
    init_federation(tmp_path / "other", "10.200.0.1", num_nodes=1)
    lay = Layout(fed)
    other_key = Layout(tmp_path / "other").server_key
    with pytest.raises(FederationError, match=rf"private key {other_key} does not belong to certificate {lay.server_cert}"):
        check_superlink_files(lay.ca_cert, lay.server_cert, other_key)


def test_san_must_cover_host(fed: Path) -> None:
    lay = Layout(fed)
    ok = check_superlink_files(lay.ca_cert, lay.server_cert, lay.server_key, ["10.200.0.1", "FL.example.org", "0.0.0.0"])
    assert "10.200.0.1" in ok["sans"]
    with pytest.raises(FederationError, match=r"does not cover host '10\.9\.9\.9'.*--san 10\.9\.9\.9"):
        check_superlink_files(lay.ca_cert, lay.server_cert, lay.server_key, ["10.9.9.9"])


def _expired_cert(lay: Layout, dst: Path) -> Path:
    ca_key = serialization.load_pem_private_key(lay.ca_key.read_bytes(), None)
    ca = x509.load_pem_x509_certificate(lay.ca_cert.read_bytes())
    server_key = serialization.load_pem_private_key(lay.server_key.read_bytes(), None)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")])).issuer_name(ca.subject)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30)).not_valid_after(now - dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("fl.example.org")]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    dst.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return dst


def test_expired_cert_is_named(fed: Path, tmp_path: Path) -> None:
    lay = Layout(fed)
    old = _expired_cert(lay, tmp_path / "old.crt")
    with pytest.raises(FederationError, match=rf"certificate {old} expired on"):
        check_superlink_files(lay.ca_cert, old, lay.server_key)


def test_group_readable_key_refused(fed: Path, tmp_path: Path) -> None:
    lay = _copy(fed, tmp_path / "f")
    key = lay.node_dir("node-0") / "node.key"
    os.chmod(key, 0o644)
    with pytest.raises(FederationError, match=rf"private key {key} has mode 0644.*chmod 600"):
        check_supernode_files(lay.ca_cert, key)


def test_wrong_key_formats(fed: Path, tmp_path: Path) -> None:
    lay = Layout(fed)
    pem = tmp_path / "node.key"
    pem.write_bytes(lay.server_key.read_bytes())  # PEM, not OpenSSH
    os.chmod(pem, 0o600)
    with pytest.raises(FederationError, match=rf"SuperNode private key {pem} is not an unencrypted OpenSSH"):
        check_supernode_files(lay.ca_cert, pem)
    from cryptography.hazmat.primitives.asymmetric import ed25519

    ed = tmp_path / "ed.key"
    ed.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
    os.chmod(ed, 0o600)
    with pytest.raises(FederationError, match="must be EC on a NIST curve"):
        check_supernode_files(lay.ca_cert, ed)
    with pytest.raises(FederationError, match=rf"{lay.server_cert} is not a CA certificate"):
        check_supernode_files(lay.server_cert, lay.node_dir("node-0") / "node.key")
    garbage = tmp_path / "garbage.crt"
    garbage.write_text("not a certificate")
    with pytest.raises(FederationError, match=rf"CA certificate {garbage} is not a PEM certificate"):
        check_supernode_files(garbage, lay.node_dir("node-0") / "node.key")


def test_find_ca_cert(fed: Path, tmp_path: Path) -> None:
    lay = Layout(fed)
    assert find_ca_cert(fed) == lay.ca_cert
    assert find_ca_cert(lay.superlink_dir) == lay.superlink_dir / "ca.crt"
    assert find_ca_cert(lay.node_dir("node-0")) == lay.node_dir("node-0") / "ca.crt"
    with pytest.raises(FederationError, match="no CA certificate"):
        find_ca_cert(tmp_path)
    with pytest.raises(FederationError, match="not found"):
        find_ca_cert(tmp_path / "missing")


def test_register_checks_keys_before_connecting(fed: Path, tmp_path: Path) -> None:
    from fedsim.deploy.federation import register_nodes

    bad = tmp_path / "bad.pub"
    bad.write_text("ssh-rsa AAAA nope\n")
    with pytest.raises(FederationError, match=rf"SuperNode public key {bad}"):
        register_nodes("127.0.0.1:9", Layout(fed).ca_cert, {"bad": bad}, tmp_path / "state")


def test_cli_and_script_init(tmp_path: Path) -> None:
    env = {**os.environ, "FEDSIM": f"{sys.executable} -m fedsim.deploy.cli"}
    script = ROOT / "deploy" / "scripts" / "init-federation.sh"
    done = subprocess.run([str(script), str(tmp_path / "f"), "--superlink-host", "10.1.2.3", "--san", "fl.example.org",
                           "--nodes", "2", "--port", "9000"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "10.1.2.3:9000" in done.stdout and "DISTRIBUTE.md" in done.stdout
    assert json.loads((tmp_path / "f" / "federation.json").read_text())["superlink"]["port"] == 9000
    check = subprocess.run([sys.executable, "-m", "fedsim.deploy.cli", "deploy", "check", str(tmp_path / "f")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    again = subprocess.run([str(script), str(tmp_path / "f"), "--superlink-host", "10.1.2.3"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "not empty" in again.stderr
    for name in ("start-superlink.sh", "register-supernodes.sh", "start-supernode.sh"):
        helped = subprocess.run([str(ROOT / "deploy" / "scripts" / name), "--help"], env=env, capture_output=True,
                                text=True, timeout=60)
        assert helped.returncode == 0 and "usage: fedsim deploy" in helped.stdout, (name, helped.stderr)
