"""
Certificates made by L{netd.tls.devcerts}: the development set (made once, reused,
renewed when needed, never through a symbolic link), the deliberately bad
certificates each with exactly its promised defect, the default state
directory, and C{netd certs}.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.logger import LogLevel, capturedLogs

from netd.tls.devcerts import (
    BAD_CERTIFICATES,
    CLIENT_COMMON_NAME,
    CLIENT_DNS_NAME,
    WRONG_HOST,
    KeyAndCertificate,
    autoCertificate,
    defaultStateDir,
    ensureDevelopmentSet,
    issue,
    makeCA,
    readFileAt,
    utcNow,
    writeBadCertificates,
    writeFile,
)

LOCAL_NAMES = {"localhost", ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}


def load(path: str | Path) -> x509.Certificate:
    """
    The certificate of a PEM file.
    """
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def sanNames(certificate: x509.Certificate) -> set[object]:
    """
    The DNS names and IP addresses of a certificate's SAN extension.
    """
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName)) | set(san.get_values_for_type(x509.IPAddress))


def signedBy(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    """
    Whether C{issuer}'s key signed C{certificate}.
    """
    try:
        certificate.verify_directly_issued_by(issuer)
    except Exception:
        return False
    return True


def validNow(certificate: x509.Certificate) -> bool:
    """
    Whether the certificate's validity period includes now.
    """
    return certificate.not_valid_before_utc <= utcNow() <= certificate.not_valid_after_utc


def test_developmentSetNamesAndSignatures(tmp_path: Path) -> None:
    """
    The development set is an ECDSA P-256 CA, a server certificate for localhost, 127.0.0.1 and ::1 and a client certificate, both signed by the CA and current.
    """
    files, made = ensureDevelopmentSet(str(tmp_path))
    assert sorted(made) == sorted([files.ca, files.caKey, files.server, files.serverKey, files.client, files.clientKey])
    ca, server, client = load(files.ca), load(files.server), load(files.client)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(ca.public_key().curve, ec.SECP256R1)
    assert signedBy(ca, ca)
    assert sanNames(server) == LOCAL_NAMES
    assert ExtendedKeyUsageOID.SERVER_AUTH in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == CLIENT_COMMON_NAME
    assert sanNames(client) == {CLIENT_DNS_NAME}
    assert ExtendedKeyUsageOID.CLIENT_AUTH in client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    for leaf in (server, client):
        assert signedBy(leaf, ca) and validNow(leaf)
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_keysArePrivate(tmp_path: Path) -> None:
    """
    Key files are written with mode 0600 and certificates with 0644.
    """
    files, _ = ensureDevelopmentSet(str(tmp_path / "tls"))
    for key in (files.caKey, files.serverKey, files.clientKey):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    for certificate in (files.ca, files.server, files.client):
        assert stat.S_IMODE(os.stat(certificate).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "tls").st_mode) == 0o700


def test_autoCertificatesMadeOnceAndReused(tmp_path: Path) -> None:
    """
    certificate = "auto" makes the set in the state directory's tls/ folder once; later starts reuse the same files untouched.
    """
    files, made = autoCertificate(str(tmp_path))
    assert files.directory == str(tmp_path / "tls")
    assert len(made) == 6
    before = {p: Path(p).read_bytes() for p in (files.ca, files.server, files.serverKey)}
    again, madeAgain = autoCertificate(str(tmp_path))
    assert again == files
    assert madeAgain == []
    assert {p: Path(p).read_bytes() for p in before} == before


def test_missingServerCertificateMadeAgainWithSameCA(tmp_path: Path) -> None:
    """
    A missing server certificate is made again, signed by the CA that is kept, so clients that trust it go on trusting the server.
    """
    files, _ = autoCertificate(str(tmp_path))
    caBefore = Path(files.ca).read_bytes()
    os.unlink(files.server)
    _, made = autoCertificate(str(tmp_path))
    assert made == [files.server, files.serverKey]
    assert Path(files.ca).read_bytes() == caBefore
    assert signedBy(load(files.server), load(files.ca))


def test_expiredCertificatesRenewed(tmp_path: Path) -> None:
    """
    An expired server certificate is renewed; an expired CA is replaced, and every certificate with it.
    """
    files, _ = ensureDevelopmentSet(str(tmp_path))
    ca = makeCA()
    past = utcNow() - datetime.timedelta(days=30)
    issue(ca, ["localhost"], notBefore=past - datetime.timedelta(days=1), notAfter=past).write(
        files.server, files.serverKey
    )
    _, made = ensureDevelopmentSet(str(tmp_path))
    assert made == [files.server, files.serverKey]
    assert validNow(load(files.server))
    makeCA(notBefore=past - datetime.timedelta(days=1), notAfter=past).write(files.ca, files.caKey)
    _, made = ensureDevelopmentSet(str(tmp_path))
    assert len(made) == 6
    assert validNow(load(files.ca)) and signedBy(load(files.server), load(files.ca))


def test_mismatchedKeyMadeAgain(tmp_path: Path) -> None:
    """
    A server key that does not match its certificate (a half-written set) gets the pair made again.
    """
    files, _ = ensureDevelopmentSet(str(tmp_path))
    Path(files.serverKey).write_bytes(Path(files.clientKey).read_bytes())
    _, made = ensureDevelopmentSet(str(tmp_path))
    assert made == [files.server, files.serverKey]


def test_writeFileReplacesALinkNeverFollowsIt(tmp_path: Path) -> None:
    """
    writeFile over a symbolic link replaces the link with a new file of the given mode and leaves the file it pointed to alone; no temporary file is left.
    """
    victim = tmp_path / "victim"
    victim.write_text("root's")
    victim.chmod(0o644)
    (tmp_path / "token").symlink_to(victim)
    writeFile(str(tmp_path / "token"), b"secret", 0o600)
    assert not (tmp_path / "token").is_symlink()
    assert (tmp_path / "token").read_bytes() == b"secret"
    assert stat.S_IMODE((tmp_path / "token").stat().st_mode) == 0o600
    assert victim.read_text() == "root's" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["token", "victim"]


def test_readFileAtRefusesLinksAndOddFiles(tmp_path: Path) -> None:
    """
    readFileAt reads a regular file but refuses a symbolic link, a FIFO (without blocking) and a file larger than any certificate.
    """
    (tmp_path / "ok").write_bytes(b"pem")
    (tmp_path / "link").symlink_to(tmp_path / "ok")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "huge").write_bytes(b"x" * (2 << 20))
    assert readFileAt(None, str(tmp_path / "ok")) == b"pem"
    for name in ("link", "fifo", "huge"):
        with pytest.raises(OSError):
            readFileAt(None, str(tmp_path / name))


def test_linksInTheSetAreNotFollowed(tmp_path: Path) -> None:
    """
    A development set whose CA key and server key are symbolic links to other files gets new files in their place; the files the links named are neither read as keys nor written.
    """
    files, _ = ensureDevelopmentSet(str(tmp_path / "tls"))
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("ca-key.pem", "server-key.pem"):
        (outside / name).write_bytes((tmp_path / "tls" / name).read_bytes())
        (tmp_path / "tls" / name).unlink()
        (tmp_path / "tls" / name).symlink_to(outside / name)
    before = {name: (outside / name).read_bytes() for name in ("ca-key.pem", "server-key.pem")}
    _, made = ensureDevelopmentSet(str(tmp_path / "tls"))
    assert files.serverKey in made
    for name in ("ca-key.pem", "server-key.pem"):
        assert not (tmp_path / "tls" / name).is_symlink()
        assert (outside / name).read_bytes() == before[name]


def test_stateDirThatIsALinkFollowed(tmp_path: Path) -> None:
    """
    A state directory that is itself a symbolic link (a deployment's choice, checked by netd.daemon.privileges when root drops to a user) is followed: only tls/ and the files in it must not be links.
    """
    (tmp_path / "real").mkdir()
    (tmp_path / "state").symlink_to(tmp_path / "real")
    autoCertificate(str(tmp_path / "state"))
    assert (tmp_path / "real" / "tls" / "server.pem").is_file()


def test_tlsFolderThatIsALinkRefused(tmp_path: Path) -> None:
    """
    A tls/ folder that is a symbolic link is not written through.
    """
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "tls").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        autoCertificate(str(tmp_path / "state"))
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_autoCertificateKeptWhenItCannotBeRenewed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    After the drop (the tls/ folder is root's), a set that needs renewing keeps its server certificate, with a warning that a restart renews it; with no server certificate to keep, the error is raised.
    """
    files, _ = autoCertificate(str(tmp_path))
    issue(None, ["localhost"]).write(files.client, files.clientKey)
    serverBefore = Path(files.server).read_bytes()

    def refused(folder: int, name: str, data: bytes, mode: int) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("netd.tls.devcerts.writeFileAt", refused)
    with capturedLogs() as events:
        kept, made = autoCertificate(str(tmp_path))
    assert (kept, made) == (files, [])
    assert Path(files.server).read_bytes() == serverBefore
    warnings = [
        e for e in events if e.get("log_level") == LogLevel.warn and e.get("log_namespace") == "netd.tls.devcerts"
    ]
    assert len(warnings) == 1 and "renews them when it starts again as root" in str(warnings[0]["log_format"])
    Path(files.server).unlink()
    with pytest.raises(PermissionError):
        autoCertificate(str(tmp_path))


def test_currentSetReadWithoutTheCAKey(tmp_path: Path) -> None:
    """
    A current set is only read: the CA key, unreadable to the service user after the drop, is not needed to keep it.
    """
    files, _ = ensureDevelopmentSet(str(tmp_path))
    Path(files.caKey).unlink()
    assert ensureDevelopmentSet(str(tmp_path)) == (files, [])


def verifyServer(ca: x509.Certificate, leaf: x509.Certificate, name: str) -> None:
    """
    Verify C{leaf} for C{name} against C{ca} as a TLS client does (RFC 5280,
    name constraints included), with cryptography's verifier.
    """
    from cryptography.x509 import verification

    subject: verification.Subject
    try:
        subject = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        subject = x509.DNSName(name)
    verifier = verification.PolicyBuilder().store(verification.Store([ca])).build_server_verifier(subject)
    verifier.verify(leaf, [])


def test_developmentCAIsNameConstrained(tmp_path: Path) -> None:
    """
    The development CA carries a critical NameConstraints extension permitting only localhost, .test, .invalid, 127.0.0.0/8 and ::1, and nothing excluded.
    """
    files, _ = ensureDevelopmentSet(str(tmp_path))
    extension = load(files.ca).extensions.get_extension_for_class(x509.NameConstraints)
    assert extension.critical
    assert extension.value.excluded_subtrees is None
    assert set(extension.value.permitted_subtrees or []) == {
        x509.DNSName("localhost"),
        x509.DNSName("test"),
        x509.DNSName("invalid"),
        x509.IPAddress(ipaddress.ip_network("127.0.0.0/8")),
        x509.IPAddress(ipaddress.ip_network("::1/128")),
    }


def test_developmentCAVouchesOnlyForLocalNames(tmp_path: Path) -> None:
    """
    A certificate the development CA signs for localhost, 127.0.0.1, ::1, a .test or a .invalid name verifies; one for example.com, 10.0.0.1 or 2001:db8::1 fails on the CA's name constraints.
    """
    from cryptography.x509 import verification

    files, _ = ensureDevelopmentSet(str(tmp_path))
    ca = load(files.ca)
    signer = KeyAndCertificate(ca, serialization.load_pem_private_key(Path(files.caKey).read_bytes(), password=None))  # type: ignore[arg-type]
    verifyServer(ca, load(files.server), "localhost")
    for name in ("localhost", "127.0.0.1", "127.8.9.10", "::1", "alpha.test", WRONG_HOST):
        verifyServer(ca, issue(signer, [name]).certificate, name)
    for name in ("example.com", "10.0.0.1", "2001:db8::1", "localhost.example.com"):
        with pytest.raises(verification.VerificationError, match="(?i)constraint"):
            verifyServer(ca, issue(signer, [name]).certificate, name)


def test_unconstrainedCAMadeAgain(tmp_path: Path) -> None:
    """
    A current development CA without name constraints (made by an older netd) is made again with them, with every certificate, and the log says clients must trust the new CA.
    """
    files, _ = ensureDevelopmentSet(str(tmp_path))
    old = makeCA()
    old.write(files.ca, files.caKey)
    for path, keyPath, usage in ((files.server, files.serverKey, "server"), (files.client, files.clientKey, "client")):
        issue(old, ["localhost"], usage=usage).write(path, keyPath)  # type: ignore[arg-type]
    with capturedLogs() as events:
        _, made = ensureDevelopmentSet(str(tmp_path))
    assert len(made) == 6
    assert load(files.ca).extensions.get_extension_for_class(x509.NameConstraints).critical
    assert signedBy(load(files.server), load(files.ca))
    warnings = [
        e for e in events if e.get("log_level") == LogLevel.warn and e.get("log_namespace") == "netd.tls.devcerts"
    ]
    assert len(warnings) == 1
    assert "clients must trust the new CA" in str(warnings[0]["log_format"])


def test_rsaKeys(tmp_path: Path) -> None:
    """
    keyType "rsa" makes RSA-2048 leaf certificates (for benchmarks against RSA setups), and asking for the other type replaces them.
    """
    files, _ = ensureDevelopmentSet(str(tmp_path), keyType="rsa")
    key = load(files.server).public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    _, made = ensureDevelopmentSet(str(tmp_path), keyType="ecdsa")
    assert sorted(made) == sorted([files.server, files.serverKey, files.client, files.clientKey])


def test_badCertificatesHaveTheirDefects(tmp_path: Path) -> None:
    """
    Each bad certificate has exactly its promised defect: expired, not yet valid, the wrong host, self-signed, or an unknown issuer.
    """
    written = writeBadCertificates(str(tmp_path))
    assert [bad.name for bad, _, _ in written] == [
        "expired",
        "not-yet-valid",
        "wrong-host",
        "self-signed",
        "unknown-ca",
    ]
    ca = load(tmp_path / "ca.pem")
    now = utcNow()
    certificates = {bad.name: load(path) for bad, path, _ in written}
    for _, path, key in written:
        assert Path(path).parent == tmp_path / "bad"
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600

    expired = certificates["expired"]
    assert expired.not_valid_after_utc < now
    assert signedBy(expired, ca) and sanNames(expired) == LOCAL_NAMES

    future = certificates["not-yet-valid"]
    assert future.not_valid_before_utc > now
    assert signedBy(future, ca) and sanNames(future) == LOCAL_NAMES

    wrong = certificates["wrong-host"]
    assert sanNames(wrong) == {WRONG_HOST}
    assert signedBy(wrong, ca) and validNow(wrong)

    selfSigned = certificates["self-signed"]
    assert selfSigned.issuer == selfSigned.subject and signedBy(selfSigned, selfSigned)
    assert not signedBy(selfSigned, ca)
    assert validNow(selfSigned) and sanNames(selfSigned) == LOCAL_NAMES

    unknown = certificates["unknown-ca"]
    assert unknown.issuer != ca.subject and unknown.issuer != unknown.subject
    assert not signedBy(unknown, ca)
    assert validNow(unknown) and sanNames(unknown) == LOCAL_NAMES


def test_badCertificatesDocumented() -> None:
    """
    Every bad certificate says what is wrong with it and which error a correct client raises.
    """
    for bad in BAD_CERTIFICATES:
        assert bad.defect and bad.clientError
    errors = {bad.name: bad.clientError for bad in BAD_CERTIFICATES}
    assert "certificate has expired" in errors["expired"]
    assert "not yet valid" in errors["not-yet-valid"]
    assert "hostname mismatch" in errors["wrong-host"].lower()
    assert "self-signed certificate" in errors["self-signed"]
    assert "unable to get local issuer certificate" in errors["unknown-ca"]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param(
            {"STATE_DIRECTORY": "/var/lib/netd:/var/lib/other", "XDG_STATE_HOME": "/x", "HOME": "/h"},
            "/var/lib/netd",
            id="systemd",
        ),
        pytest.param({"XDG_STATE_HOME": "/x/state", "HOME": "/h"}, "/x/state/netd", id="xdg"),
        pytest.param({"HOME": "/home/user"}, "/home/user/.local/state/netd", id="home"),
    ],
)
def test_defaultStateDir(environ: dict[str, str], expected: str) -> None:
    """
    The state directory is systemd's $STATE_DIRECTORY (its first entry), else $XDG_STATE_HOME/netd, else ~/.local/state/netd.
    """
    assert defaultStateDir(environ) == expected


def runCerts(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """
    Run C{python -m netd certs ARGS}.
    """
    return subprocess.run(
        [sys.executable, "-m", "netd", "certs", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_certsCommandWritesAndExplains(tmp_path: Path) -> None:
    """
    `netd certs --out DIR --bad` writes the set and the bad certificates, says where the CA is and how clients trust it, and names each bad file with the error a client must raise.
    """
    out = tmp_path / "certs"
    result = runCerts("--out", str(out), "--bad")
    assert result.returncode == 0, result.stderr
    for name in ("ca.pem", "server.pem", "server-key.pem", "client.pem", "client-key.pem"):
        assert (out / name).exists()
    text = result.stdout
    assert f"-CAfile {out / 'ca.pem'}" in text
    assert f"--cacert {out / 'ca.pem'}" in text
    for bad in BAD_CERTIFICATES:
        assert str(out / "bad" / f"{bad.name}.pem") in text
        assert bad.clientError in text
    again = runCerts("--out", str(out))
    assert again.returncode == 0
    assert "reused" in again.stdout


def test_certsCommandDefaultsToStateDir(tmp_path: Path) -> None:
    """
    Without --out, `netd certs` writes into the state directory's tls/ folder, where certificate = "auto" finds them.
    """
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path), "STATE_DIRECTORY": ""}
    result = runCerts(env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "netd" / "tls" / "ca.pem").exists()
    assert str(tmp_path / "netd" / "tls" / "ca.pem") in result.stdout


def test_certsCommandUsesConfigStateDir(tmp_path: Path) -> None:
    """
    `netd certs -c FILE` writes into the tls/ folder of FILE's [daemon] state_dir, the folder its certificate = "auto" services use.
    """
    config = tmp_path / "netd.toml"
    state = tmp_path / "state"
    config.write_text(
        f'[daemon]\nstate_dir = "{state}"\n\n[[services]]\nname = "e"\nplugin = "echo"\nlisten = ["tcp:0"]\n'
        'tls = { certificate = "auto" }\n'
    )
    result = runCerts("-c", str(config))
    assert result.returncode == 0, result.stderr
    assert (state / "tls" / "server.pem").exists()


def test_certsCommandHelp() -> None:
    """
    `netd certs --help` describes --out, --bad and --key-type.
    """
    result = runCerts("--help")
    assert result.returncode == 0
    for option in ("--out", "--bad", "--key-type"):
        assert option in result.stdout
