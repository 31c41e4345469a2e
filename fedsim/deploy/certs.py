"""Certificates and keys of a new federation, and checks that name the offending file.

`init_federation(DIR, superlink_host=..., num_nodes=N)` writes (with the `cryptography` package, no openssl):

    DIR/ca/ca.crt, ca.key                 the federation CA (EC P-384, self-signed); ca.key stays OFFLINE
    DIR/superlink/ca.crt, server.crt, server.key, superlink.json
                                          the SuperLink's TLS certificate, signed by the CA, whose subjectAltNames
                                          are exactly the host names / IP addresses given (plus 127.0.0.1 and
                                          localhost unless turned off: the SuperLink's own SuperExec and ServerApp
                                          connect to it over loopback when it listens on 0.0.0.0)
    DIR/supernodes/node-K/ca.crt, node.key, node.pub, node.json
                                          SuperNode K's authentication key pair: EC P-384 in OpenSSH format (what
                                          Flower 1.42 reads: `flower-supernode --auth-supernode-private-key` takes an
                                          OpenSSH private key, `flwr supernode register` an OpenSSH public key of a
                                          NIST curve), its partition id and the SuperLink address
    DIR/federation.json                   hosts, SANs, nodes (name, partition id, public-key fingerprint)
    DIR/DISTRIBUTE.md                     what to copy to which host

Private keys are written with mode 0600 (their folders 0700). No wildcard names are ever issued.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedsim.runtime.process import RuntimeFailure

CURVE = ec.SECP384R1()
NIST_CURVES = ("secp256r1", "secp384r1", "secp521r1")
LOOPBACK_SANS = ("127.0.0.1", "localhost")
DEFAULT_PORT = 8000
CLOCK_SKEW = dt.timedelta(minutes=5)
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


class FederationError(RuntimeFailure):
    """A federation's certificates, keys, hosts or processes are not usable; the message names the file,
    host or key at fault."""


# ------------------------------------------------------------------------------------------------ layout


@dataclass(frozen=True)
class Layout:
    """Where `init_federation` puts each file."""

    root: Path

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.ca_dir / "ca.key"

    @property
    def superlink_dir(self) -> Path:
        return self.root / "superlink"

    @property
    def server_cert(self) -> Path:
        return self.superlink_dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.superlink_dir / "server.key"

    @property
    def supernodes_dir(self) -> Path:
        return self.root / "supernodes"

    def node_dir(self, name: str) -> Path:
        return self.supernodes_dir / name

    @property
    def manifest(self) -> Path:
        return self.root / "federation.json"


def find_ca_cert(path: str | os.PathLike[str]) -> Path:
    """The CA certificate in `path`: the file itself, or `ca.crt` in it, in `ca/` or in `superlink/` (a
    federation directory, a role directory, or a folder holding just the CA certificate)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.exists():
        raise FederationError(f"certificates directory not found: {p}")
    for candidate in (p / "ca.crt", p / "ca" / "ca.crt", p / "superlink" / "ca.crt"):
        if candidate.is_file():
            return candidate
    raise FederationError(f"no CA certificate in {p}: expected {p / 'ca.crt'} or {p / 'ca' / 'ca.crt'}")


# ------------------------------------------------------------------------------------------------ hosts


def split_host_port(address: str, what: str = "SuperLink address") -> tuple[str, int]:
    """("host", port) of "HOST:PORT" or "[IPv6]:PORT"; FederationError naming `address` otherwise."""
    host, sep, port = address.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FederationError(f"{what} must look like HOST:PORT, got {address!r}")
    return host, int(port)


def classify_hosts(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) of `names`, each checked; FederationError naming a bad one."""
    dns: list[str] = []
    ips: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            raise FederationError("empty host name in the SAN list")
        if "*" in name:
            raise FederationError(f"wildcard host name {name!r} refused: list every host explicitly")
        try:
            ip = ipaddress.ip_address(name.strip("[]"))
        except ValueError:
            ip = None
        if ip is not None:
            if ip.is_unspecified:
                raise FederationError(
                    f"{name!r} is a bind-all address, not a host anyone connects to: give the SuperLink's real "
                    "IP address or DNS name (it may still listen on 0.0.0.0)"
                )
            if str(ip) not in ips:
                ips.append(str(ip))
            continue
        host = name.rstrip(".").lower()
        if ":" in host or "/" in host:
            raise FederationError(f"{name!r} is not a host name or IP address (give the host without a port or URL)")
        if len(host) > 253 or not all(_DNS_LABEL.match(label) for label in host.split(".")):
            raise FederationError(f"{name!r} is not a valid DNS host name")
        if host not in dns:
            dns.append(host)
    return dns, ips


# ------------------------------------------------------------------------------------------------ writing


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if private:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(path, 0o600)
    else:
        path.write_bytes(data)
        os.chmod(path, 0o644)


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def fingerprint(cert: x509.Certificate) -> str:
    return "SHA256:" + cert.fingerprint(hashes.SHA256()).hex()


def ssh_fingerprint(public_openssh: bytes) -> str:
    """OpenSSH-style fingerprint (SHA256:base64) of an OpenSSH public key line."""
    blob = base64.b64decode(public_openssh.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def make_ca(name: str, days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(CURVE)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedsim"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def make_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str,
                     dns: Sequence[str], ips: Sequence[str],
                     days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    if not dns and not ips:
        raise FederationError("the SuperLink certificate needs at least one host name or IP address")
    key = ec.generate_private_key(CURVE)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedsim"),
                                 x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def make_node_keys() -> tuple[bytes, bytes]:
    """(OpenSSH private key, OpenSSH public key line) of a new EC P-384 SuperNode identity."""
    key = ec.generate_private_key(CURVE)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + b"\n"


def init_federation(
    directory: str | os.PathLike[str],
    superlink_host: str,
    *,
    num_nodes: int,
    port: int = DEFAULT_PORT,
    sans: Sequence[str] = (),
    node_names: Sequence[str] | None = None,
    days: int = 365,
    include_loopback: bool = True,
    name: str = "fedsim federation",
    force: bool = False,
) -> dict[str, Any]:
    """Write a new federation directory (see the module docstring) and return its manifest."""
    root = Path(directory).expanduser()
    layout = Layout(root)
    if num_nodes < 1:
        raise FederationError(f"a federation needs at least one SuperNode, got {num_nodes}")
    if not 0 < port < 65536:
        raise FederationError(f"SuperLink port {port} is outside 1..65535")
    if days < 1:
        raise FederationError(f"certificate lifetime must be at least 1 day, got {days}")
    names = list(node_names) if node_names else [f"node-{k}" for k in range(num_nodes)]
    if len(names) != num_nodes or len(set(names)) != num_nodes:
        raise FederationError(f"node names must be {num_nodes} distinct names, got {names}")
    for n in names:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", n):
            raise FederationError(f"node name {n!r} may hold only letters, digits, '.', '_' and '-'")
    hosts = [superlink_host, *sans] + (list(LOOPBACK_SANS) if include_loopback else [])
    dns, ips = classify_hosts(hosts)
    link_host = superlink_host.strip().strip("[]")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        if not force:
            raise FederationError(f"{root} exists and is not empty; choose a new directory (or pass --force)")
        if root.is_dir():
            for sub in ("ca", "superlink", "supernodes"):
                shutil.rmtree(root / sub, ignore_errors=True)
            for f in ("federation.json", "DISTRIBUTE.md"):
                (root / f).unlink(missing_ok=True)
        else:
            raise FederationError(f"{root} is a file; choose a directory")
    root.mkdir(parents=True, exist_ok=True)

    ca_key, ca_cert = make_ca(f"{name} CA", days)
    _private_dir(layout.ca_dir)
    _write(layout.ca_key, _pem_key(ca_key), private=True)
    _write(layout.ca_cert, _cert_pem(ca_cert))

    server_key, server_cert = make_server_cert(ca_key, ca_cert, link_host, dns, ips, days)
    _private_dir(layout.superlink_dir)
    _write(layout.superlink_dir / "ca.crt", _cert_pem(ca_cert))
    _write(layout.server_cert, _cert_pem(server_cert))
    _write(layout.server_key, _pem_key(server_key), private=True)
    address = f"[{link_host}]:{port}" if ":" in link_host else f"{link_host}:{port}"
    superlink_info = {"host": link_host, "port": port, "address": address, "sans": {"dns": dns, "ip": ips}}
    (layout.superlink_dir / "superlink.json").write_text(json.dumps(superlink_info, indent=2) + "\n", encoding="utf-8")

    nodes = []
    for k, node in enumerate(names):
        ndir = layout.node_dir(node)
        _private_dir(ndir)
        private, public = make_node_keys()
        _write(ndir / "node.key", private, private=True)
        _write(ndir / "node.pub", public)
        _write(ndir / "ca.crt", _cert_pem(ca_cert))
        info = {"name": node, "partition_id": k, "num_partitions": num_nodes, "superlink": address}
        (ndir / "node.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        nodes.append({**info, "public_key": public.decode().strip(), "fingerprint": ssh_fingerprint(public)})

    manifest = {
        "version": 1,
        "name": name,
        "created": _now().isoformat(timespec="seconds"),
        "superlink": superlink_info,
        "ca": {"subject": ca_cert.subject.rfc4514_string(), "fingerprint": fingerprint(ca_cert),
               "not_after": ca_cert.not_valid_after_utc.isoformat()},
        "server_cert": {"fingerprint": fingerprint(server_cert),
                        "not_after": server_cert.not_valid_after_utc.isoformat()},
        "key_type": "EC P-384 (NIST secp384r1); SuperNode keys in OpenSSH format",
        "nodes": nodes,
    }
    layout.manifest.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    (root / "DISTRIBUTE.md").write_text(distribute_text(manifest), encoding="utf-8")
    return manifest


def distribute_text(manifest: dict[str, Any]) -> str:
    link = manifest["superlink"]
    nodes = manifest["nodes"]
    sans = ", ".join([*link["sans"]["dns"], *link["sans"]["ip"]])
    lines = [
        f"# Distributing the federation \"{manifest['name']}\"",
        "",
        f"SuperLink address: `{link['address']}`; its certificate covers: {sans}.",
        f"CA fingerprint: `{manifest['ca']['fingerprint']}` (compare it on every host).",
        "",
        "| copy | to | mode |",
        "|---|---|---|",
        "| `ca/ca.key` | **nowhere**: keep it offline (it signs new SuperLink certificates) | 0600 |",
        "| `superlink/` (ca.crt, server.crt, server.key, superlink.json) | the SuperLink host | server.key 0600 |",
    ]
    for n in nodes:
        lines.append(f"| `supernodes/{n['name']}/` (ca.crt, node.key, node.json) | the host of SuperNode {n['name']} "
                     f"(partition {n['partition_id']}) | node.key 0600 |")
    lines += [
        "| `ca/ca.crt` (or any `ca.crt`) | every host that submits runs (`fedsim run --mode deploy`) | 0644 |",
        "",
        "Copy over an authenticated channel (e.g. `scp -p`, which keeps the modes) and check the modes after copying.",
        "The public keys `supernodes/*/node.pub` stay with the operator who registers them; a SuperNode host never",
        "needs another node's files.",
        "",
        "## Order",
        "",
        "1. SuperLink host: `fedsim deploy superlink --certs superlink/ --host 0.0.0.0 "
        f"--port {link['port']} --state-dir /var/lib/fedsim/superlink`",
        "   (TLS and SuperNode authentication on; runtime dependency installation off; the state database keeps",
        "   registrations across restarts).",
        f"2. Operator (any host trusting the CA): `fedsim deploy register --certs . --superlink {link['address']}`",
        "   registers every `supernodes/*/node.pub` with the SuperLink.",
        "3. Each SuperNode host: `fedsim deploy supernode --node-dir supernodes/NODE/ --data-dir /srv/data "
        "--state-dir /var/lib/fedsim/NODE`.",
        f"4. Submitter: `fedsim run PRESET --mode deploy --superlink {link['address']} --certs DIR_WITH_CA_CRT "
        "--out RUN_DIR`, where RUN_DIR",
        "   is writable by the SuperLink host (the ServerApp writes the run directory there): the same host or a",
        "   shared file system mounted at the same path.",
        "",
        "## Security notes (Flower 1.42)",
        "",
        "- TLS is server-side only (no client certificates); SuperNodes prove their identity by signing every",
        "  request with `node.key`, and the SuperLink accepts only registered public keys.",
        "- Open-source Flower has no account authentication on the Control API, which shares the one port with",
        "  the Fleet API: anyone who can reach that port and trusts the CA can submit runs and register keys.",
        "  Allow only the federation's hosts to reach it (private network, VPN or firewall).",
        "- Runtime dependency installation stays off on the SuperLink and the SuperNodes: every host needs fedsim",
        "  installed in the environment that runs the Flower commands.",
        "",
        "## Nodes",
        "",
    ]
    for n in nodes:
        lines.append(f"- {n['name']}: partition {n['partition_id']} of {n['num_partitions']}, key {n['fingerprint']}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ checks


def require_file(path: str | os.PathLike[str], what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FederationError(f"{what} not found: {p}")
    if not p.is_file():
        raise FederationError(f"{what} is not a file: {p}")
    return p


def load_certificate(path: str | os.PathLike[str], what: str = "certificate") -> x509.Certificate:
    p = require_file(path, what)
    try:
        return x509.load_pem_x509_certificate(p.read_bytes())
    except ValueError as err:
        raise FederationError(f"{what} {p} is not a PEM certificate: {err}") from None


def load_pem_private_key(path: str | os.PathLike[str], what: str = "private key") -> Any:
    p = require_file(path, what)
    try:
        return serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise FederationError(f"{what} {p} is not an unencrypted PEM private key: {err}") from None


def load_node_private_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePrivateKey:
    """A SuperNode's key as Flower reads it: OpenSSH format, EC on a NIST curve."""
    p = require_file(path, "SuperNode private key")
    try:
        key = serialization.load_ssh_private_key(p.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise FederationError(f"SuperNode private key {p} is not an unencrypted OpenSSH private key: {err}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in NIST_CURVES:
        raise FederationError(f"SuperNode private key {p} must be EC on a NIST curve (P-256/384/521), "
                              f"got {type(key).__name__}")
    return key


def load_node_public_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePublicKey:
    p = require_file(path, "SuperNode public key")
    try:
        key = serialization.load_ssh_public_key(p.read_bytes())
    except (ValueError, UnsupportedAlgorithm) as err:
        raise FederationError(f"SuperNode public key {p} is not an OpenSSH public key: {err}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in NIST_CURVES:
        raise FederationError(f"SuperNode public key {p} must be EC on a NIST curve (P-256/384/521)")
    return key


def check_private_mode(path: Path) -> None:
    """A private key readable by group or others is refused (as ssh does)."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise FederationError(f"private key {path} has mode {mode:04o}; it must not be readable by others "
                              f"(chmod 600 {path})")


def check_validity(cert: x509.Certificate, path: Path, now: dt.datetime | None = None) -> None:
    now = now or _now()
    if now < cert.not_valid_before_utc:
        raise FederationError(f"certificate {path} is not valid yet "
                              f"(valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC)")
    if now > cert.not_valid_after_utc:
        raise FederationError(f"certificate {path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")


def check_is_ca(ca: x509.Certificate, path: Path) -> None:
    try:
        bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise FederationError(f"{path} is not a CA certificate (basicConstraints CA:TRUE missing)")


def check_signed_by(cert: x509.Certificate, path: Path, ca: x509.Certificate, ca_path: Path) -> None:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise FederationError(
            f"certificate {path} is not signed by the CA {ca_path} (issuer {cert.issuer.rfc4514_string()!r}; "
            f"this CA is {ca.subject.rfc4514_string()!r}, {fingerprint(ca)}): the files come from different "
            "federations"
        ) from None


def san_entries(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return ([d.lower() for d in ext.get_values_for_type(x509.DNSName)],
            [str(i) for i in ext.get_values_for_type(x509.IPAddress)])


def san_covers(cert: x509.Certificate, host: str) -> bool:
    dns, ips = san_entries(cert)
    host = host.strip().strip("[]")
    try:
        return str(ipaddress.ip_address(host)) in ips
    except ValueError:
        pass
    host = host.rstrip(".").lower()
    for name in dns:
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


def check_san(cert: x509.Certificate, path: Path, host: str) -> None:
    if not san_covers(cert, host):
        dns, ips = san_entries(cert)
        raise FederationError(
            f"certificate {path} does not cover host {host!r}: its subjectAltNames are "
            f"{', '.join([*dns, *ips]) or 'empty'} (re-run `fedsim deploy init` with --san {host})"
        )


def check_key_matches(cert: x509.Certificate, path: Path, key: Any, key_path: Path) -> None:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*fmt) != key.public_key().public_bytes(*fmt):
        raise FederationError(f"private key {key_path} does not belong to certificate {path}")


def is_bind_all(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def check_superlink_files(ca_cert: str | os.PathLike[str], server_cert: str | os.PathLike[str],
                          server_key: str | os.PathLike[str], hosts: Sequence[str] = ()) -> dict[str, Any]:
    """Everything a TLS SuperLink needs, checked before it starts: the three files exist and parse, the key
    is private and belongs to the certificate, the certificate is signed by the CA and valid now, and its
    SANs cover every host in `hosts` (bind-all addresses are skipped: clients never connect to them)."""
    ca_path = require_file(ca_cert, "CA certificate")
    cert_path = require_file(server_cert, "SuperLink certificate")
    key_path = require_file(server_key, "SuperLink private key")
    ca = load_certificate(ca_path, "CA certificate")
    check_is_ca(ca, ca_path)
    check_validity(ca, ca_path)
    cert = load_certificate(cert_path, "SuperLink certificate")
    key = load_pem_private_key(key_path, "SuperLink private key")
    check_private_mode(key_path)
    check_key_matches(cert, cert_path, key, key_path)
    check_signed_by(cert, cert_path, ca, ca_path)
    check_validity(cert, cert_path)
    for host in hosts:
        if host and not is_bind_all(host):
            check_san(cert, cert_path, host)
    dns, ips = san_entries(cert)
    return {"ca": str(ca_path), "cert": str(cert_path), "key": str(key_path), "sans": [*dns, *ips],
            "not_after": cert.not_valid_after_utc.isoformat(), "ca_fingerprint": fingerprint(ca)}


def check_supernode_files(ca_cert: str | os.PathLike[str], node_key: str | os.PathLike[str]) -> dict[str, Any]:
    """A SuperNode's CA certificate (valid, a CA) and authentication key (OpenSSH EC, private mode)."""
    ca_path = require_file(ca_cert, "CA certificate")
    ca = load_certificate(ca_path, "CA certificate")
    check_is_ca(ca, ca_path)
    check_validity(ca, ca_path)
    key_path = require_file(node_key, "SuperNode private key")
    key = load_node_private_key(key_path)
    check_private_mode(key_path)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return {"ca": str(ca_path), "key": str(key_path), "public_key": public.decode(),
            "fingerprint": ssh_fingerprint(public), "ca_fingerprint": fingerprint(ca)}


def check_federation(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a whole federation directory written by `init_federation` (as the operator holds it)."""
    layout = Layout(Path(directory).expanduser())
    manifest_path = require_file(layout.manifest, "federation manifest")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    link = check_superlink_files(layout.superlink_dir / "ca.crt", layout.server_cert, layout.server_key,
                                 [manifest["superlink"]["host"]])
    ca = load_certificate(layout.ca_cert, "CA certificate")
    if fingerprint(ca) != link["ca_fingerprint"]:
        raise FederationError(f"{layout.superlink_dir / 'ca.crt'} differs from {layout.ca_cert}")
    nodes = []
    for node in manifest["nodes"]:
        ndir = layout.node_dir(node["name"])
        info = check_supernode_files(ndir / "ca.crt", ndir / "node.key")
        if info["ca_fingerprint"] != link["ca_fingerprint"]:
            raise FederationError(f"{ndir / 'ca.crt'} is not this federation's CA ({layout.ca_cert})")
        pub = load_node_public_key(ndir / "node.pub")
        pub_line = pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        if pub_line != info["public_key"]:
            raise FederationError(f"{ndir / 'node.pub'} does not belong to {ndir / 'node.key'}")
        nodes.append({"name": node["name"], **info})
    return {"superlink": link, "nodes": nodes}


def public_key_line(path: str | os.PathLike[str]) -> str:
    key = load_node_public_key(path)
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
