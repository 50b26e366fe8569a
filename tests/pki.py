"""Test TLS material and private namespaces for tests that need a client to trust Moorage's certificate.

`Pki` makes a CA (optionally with an intermediate) and a server certificate with the `cryptography` package.
`PrivateNetwork` holds mount and network namespaces open (`unshare -m -n`): only loopback interfaces, so nothing
run inside can reach another machine, and files bind-mounted over system paths (/etc/hosts, a CA bundle,
/etc/docker) that the machine itself never sees.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shlex
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_CA_USAGE = x509.KeyUsage(False, False, False, False, False, True, True, False, False)  # keyCertSign, cRLSign


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class Pki:
    """A test CA and a server certificate it signed, for the given DNS names and `ips` (127.0.0.1 by default).
    With `intermediate`, the CA signs an intermediate CA that signs the server's certificate, and `cert` is the
    chain a server sends: the server's certificate, then the intermediate's."""

    def __init__(
        self, root: Path, names: list[str], ips: tuple[str, ...] = ("127.0.0.1",), intermediate: bool = False
    ) -> None:
        root.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC)

        def issue(
            subject: str, public: ec.EllipticCurvePublicKey, issuer: x509.Name, signer: ec.EllipticCurvePrivateKey
        ) -> x509.CertificateBuilder:
            return (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                .issuer_name(issuer)
                .public_key(public)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=1))
            )

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Moorage test CA")])
        ca = (
            issue("Moorage test CA", ca_key.public_key(), ca_name, ca_key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_CA_USAGE, critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        chain: list[x509.Certificate] = []
        signer_key, signer_name = ca_key, ca_name
        if intermediate:
            mid_key = ec.generate_private_key(ec.SECP256R1())
            mid = (
                issue("Moorage test intermediate CA", mid_key.public_key(), ca_name, ca_key)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(_CA_USAGE, critical=True)
                .sign(ca_key, hashes.SHA256())
            )
            chain.append(mid)
            signer_key, signer_name = mid_key, mid.subject
        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        cert = (
            issue(names[0], key.public_key(), signer_name, signer_key)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(signer_key, hashes.SHA256())
        )
        self.ca = root / "ca.pem"
        self.cert = root / "server.pem"
        self.key = root / "server-key.pem"
        self.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.cert.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [cert, *chain]))
        self.key.write_bytes(_pem_key(key))
        self.key.chmod(0o600)


class PrivateNetwork:
    """Mount and network namespaces held open by a sleeping process: loopback only (`lo` up, with `addresses`
    added to it, e.g. "192.0.2.1/32": an address that is not 127.0.0.0/8 for clients that treat those
    specially, still reachable from inside only), and each `binds` source file or directory bind-mounted on its
    target path. `wrap` runs a command inside."""

    SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

    def __init__(self, binds: dict[Path, Path], addresses: tuple[str, ...] = ()) -> None:
        steps = [f"mount --bind {shlex.quote(str(src))} {shlex.quote(str(dst))}" for dst, src in binds.items()]
        steps.append("ip link set lo up")
        steps += [f"ip addr add {shlex.quote(a)} dev lo" for a in addresses]
        script = " && ".join([*steps, "echo ready", "exec sleep 100000"])
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            why = self.proc.stderr.read() if self.proc.stderr else ""
            self.close()
            raise RuntimeError(f"could not set up the namespaces: {why}")
        self.wrap = ["nsenter", f"--target={self.proc.pid}", "--mount", "--net"]

    def run(self, *cmd: str, env: dict[str, str] | None = None, input: str | None = None, check: bool = True):
        p = subprocess.run(
            [*self.wrap, *cmd], env=env, input=input, capture_output=True, text=True, timeout=120, check=False
        )
        assert not check or p.returncode == 0, f"$ {' '.join(cmd)} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
