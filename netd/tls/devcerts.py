"""
Certificates for development and for testing clients, made with the
C{cryptography} package: the I{development set} (a name-constrained CA, a
server and a client certificate) that C{certificate = "auto"} and C{netd
certs} use, and the I{bad} certificates, one defect each, that a client must
refuse.  Files are written whole, keys mode 0600, never through a symbolic
link; docs/tls.md, "Design note: the development set on disk", tells why.
"""

from __future__ import annotations

import datetime
import errno
import ipaddress
import os
import secrets
import stat
from collections.abc import Mapping, Sequence
from typing import Literal

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.logger import Logger

from netd.tls.keys import publicKeyBytes

log = Logger(namespace="netd.tls.devcerts")

KeyType = Literal["ecdsa", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

SERVER_NAMES = ("localhost", "127.0.0.1", "::1")
"""
The names the development server certificate is valid for.
"""

CLIENT_COMMON_NAME = "netd client"
CLIENT_DNS_NAME = "client.netd.test"
"""
The names on the development client certificate (its subject CN and its SAN),
for C{client_allow}.
"""

WRONG_HOST = "wrong.host.invalid"
"""
The only name on the C{wrong-host} bad certificate.
"""

DEVELOPMENT_PERMITTED = ("localhost", "test", "invalid", "127.0.0.0/8", "::1/128")
"""
The names the development CA may vouch for (its critical NameConstraints):
C{localhost}, C{.test} and C{.invalid} (RFC 6761) with their subdomains, and
the loopback addresses; so a leaked development CA cannot vouch for a real
name, whatever a client trusts it for.
"""

CA_LIFETIME = datetime.timedelta(days=3650)
LEAF_LIFETIME = datetime.timedelta(days=397)
"""
How long made certificates are valid: the CA ten years, the others 397 days
(the longest that every browser and OS accepts for a server certificate).
"""

RENEW_BEFORE = datetime.timedelta(days=1)
"""
A reused certificate that expires within this much time is made again.
"""

_BACKDATE = datetime.timedelta(hours=1)
"""
How far before now a new certificate's validity starts, so that a peer whose
clock is a little behind accepts it.
"""


def utcNow() -> datetime.datetime:
    """
    The current time, timezone-aware, in UTC.
    """
    return datetime.datetime.now(datetime.UTC)


def newKey(keyType: KeyType = "ecdsa") -> PrivateKey:
    """
    A new private key: ECDSA on P-256, or RSA 2048.
    """
    if keyType == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def keyTypeOf(key: object) -> KeyType | None:
    """
    Which L{KeyType} a key (private or public) is, if either.
    """
    if isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        return "ecdsa"
    if isinstance(key, (rsa.RSAPrivateKey, rsa.RSAPublicKey)):
        return "rsa"
    return None


def _name(commonName: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])


def _subjectAlternativeNames(names: Sequence[str]) -> list[x509.GeneralName]:
    """
    SAN entries for names: IP addresses as such, URIs (with "://") as URIs,
    everything else as DNS names.
    """
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
            continue
        except ValueError:
            pass
        if "://" in name:
            entries.append(x509.UniformResourceIdentifier(name))
        else:
            entries.append(x509.DNSName(name))
    return entries


@attrs.frozen
class KeyAndCertificate:
    """
    A certificate and its private key.
    """

    certificate: x509.Certificate
    key: PrivateKey

    def certificatePEM(self) -> bytes:
        """
        The certificate in PEM.
        """
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def keyPEM(self) -> bytes:
        """
        The private key in unencrypted PKCS#8 PEM.
        """
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def write(self, certificatePath: str, keyPath: str) -> None:
        """
        Write the certificate (mode 0644) and the key (mode 0600).
        """
        writeFile(keyPath, self.keyPEM(), 0o600)
        writeFile(certificatePath, self.certificatePEM(), 0o644)

    def writeAt(self, folder: int, certificateName: str, keyName: str) -> None:
        """
        Write the certificate (mode 0644) and the key (mode 0600) into a
        folder by its descriptor (L{writeFileAt}).
        """
        writeFileAt(folder, keyName, self.keyPEM(), 0o600)
        writeFileAt(folder, certificateName, self.certificatePEM(), 0o644)


def makeCA(
    commonName: str = "netd development CA",
    *,
    issuer: KeyAndCertificate | None = None,
    pathLength: int | None = 0,
    keyType: KeyType = "ecdsa",
    notBefore: datetime.datetime | None = None,
    notAfter: datetime.datetime | None = None,
    permitted: Sequence[str] | None = None,
) -> KeyAndCertificate:
    """
    A new certificate authority: a self-signed root, or an intermediate
    signed by C{issuer}.

    @param pathLength: how many intermediate CAs may follow it in a chain
        (L{None}: any); 0, the default, lets it sign end-entity certificates only.
    @param permitted: the only names it may vouch for (DNS names, with their
        subdomains, and IP networks such as C{127.0.0.0/8}), as a critical
        NameConstraints extension (L{nameConstraints}); L{None}: any name.
    """
    now = utcNow()
    key = newKey(keyType)
    publicKey = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(commonName))
        .issuer_name(issuer.certificate.subject if issuer else _name(commonName))
        .public_key(publicKey)
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore or now - _BACKDATE)
        .not_valid_after(notAfter or now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=pathLength), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(publicKey), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    if permitted is not None:
        builder = builder.add_extension(nameConstraints(permitted), critical=True)
    return KeyAndCertificate(builder.sign(issuer.key if issuer else key, hashes.SHA256()), key)


def nameConstraints(permitted: Sequence[str]) -> x509.NameConstraints:
    """
    NameConstraints permitting C{permitted}: IP networks (C{127.0.0.0/8}) as
    such, everything else as DNS names (each with its subdomains).
    """
    subtrees: list[x509.GeneralName] = []
    for name in permitted:
        try:
            subtrees.append(x509.IPAddress(ipaddress.ip_network(name)))
        except ValueError:
            subtrees.append(x509.DNSName(name))
    return x509.NameConstraints(permitted_subtrees=subtrees, excluded_subtrees=None)


def _constrained(ca: x509.Certificate) -> bool:
    """
    Whether a CA carries the development CA's name constraints, critical.
    """
    try:
        extension = ca.extensions.get_extension_for_class(x509.NameConstraints)
    except x509.ExtensionNotFound:
        return False
    return extension.critical and extension.value == nameConstraints(DEVELOPMENT_PERMITTED)


def issue(
    issuer: KeyAndCertificate | None,
    names: Sequence[str],
    *,
    commonName: str | None = None,
    usage: Literal["server", "client"] = "server",
    keyType: KeyType = "ecdsa",
    notBefore: datetime.datetime | None = None,
    notAfter: datetime.datetime | None = None,
) -> KeyAndCertificate:
    """
    A new end-entity certificate for C{names} (DNS names, IP addresses or
    URIs, all put in its subject alternative names).

    @param issuer: the CA that signs it; L{None} makes it self-signed.
    @param commonName: its subject CN; the first name when unset.
    @param usage: the extended key usage: TLS server or TLS client.
    """
    now = utcNow()
    key = newKey(keyType)
    subject = _name(commonName or names[0])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore or now - _BACKDATE)
        .not_valid_after(notAfter or now + LEAF_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(_subjectAlternativeNames(names)), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if usage == "server" else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    signer = issuer.key if issuer else key
    return KeyAndCertificate(builder.sign(signer, hashes.SHA256()), key)


_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_MAX_READ = 1 << 20
"""
The most netd reads of one certificate or key file: a development file is a
few kilobytes, so anything larger is not one.
"""


def openFolder(path: str, mode: int = 0o700) -> int:
    """
    A descriptor of the folder C{path}, made with C{mode} (and its missing
    parents) when it does not exist; its last component is never a symbolic
    link.  Files in it are then made and read with L{writeFileAt} and
    L{readFileAt}, which follow no link either.
    """
    parent, name = os.path.split(os.path.abspath(path))
    if not name:
        return os.open(parent, _FOLDER_FLAGS)
    os.makedirs(parent, exist_ok=True)
    parentFd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return folderAt(parentFd, name, mode)
    finally:
        os.close(parentFd)


def folderAt(parent: int, name: str, mode: int = 0o700) -> int:
    """
    A descriptor of the folder C{name} in the folder C{parent}, made with
    C{mode} (whatever the umask) when it does not exist; never a symbolic link.
    """
    try:
        os.mkdir(name, 0o700, dir_fd=parent)
    except FileExistsError:
        return os.open(name, _FOLDER_FLAGS, dir_fd=parent)
    fd = os.open(name, _FOLDER_FLAGS, dir_fd=parent)
    os.fchmod(fd, mode)
    return fd


def writeFileAt(folder: int, name: str, data: bytes, mode: int) -> None:
    """
    Replace C{name} in the folder C{folder} with C{data} in one step: a new
    file of a random name (made exclusively, never through a link) gets the
    mode and the bytes, then is renamed over C{name}, which replaces a link
    of that name rather than following it.
    """
    for _ in range(100):
        temporary = f".netd-{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(
                temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=folder
            )
        except FileExistsError:
            continue
        break
    else:
        raise FileExistsError(errno.EEXIST, "no free temporary name", name)
    try:
        with open(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
        os.replace(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        try:
            os.unlink(temporary, dir_fd=folder)
        except OSError:
            pass
        raise


def writeFile(path: str, data: bytes, mode: int) -> None:
    """
    Replace C{path} with C{data} in one step, with the given permissions from
    the start (L{writeFileAt} in its folder, which must exist): a symbolic
    link at C{path} is replaced, never followed.
    """
    parent, name = os.path.split(os.path.abspath(path))
    folder = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        writeFileAt(folder, name, data, mode)
    finally:
        os.close(folder)


def readFileAt(folder: int | None, name: str) -> bytes:
    """
    The bytes of the regular file C{name} (in the folder C{folder}, or a
    path when it is L{None}), opened without following a link there.

    @raise OSError: when it is missing, unreadable, a link or not a regular
        file, or larger than any certificate or key netd reads.
    """
    fd = os.open(name, _READ_FLAGS, dir_fd=folder)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", name)
        data = f.read(_MAX_READ + 1)
    if len(data) > _MAX_READ:
        raise OSError(errno.EFBIG, f"larger than {_MAX_READ} bytes", name)
    return data


def defaultStateDir(environ: Mapping[str, str] = os.environ) -> str:
    """
    Where netd keeps state when C{[daemon] state_dir} is unset: systemd's
    C{$STATE_DIRECTORY} (its first entry), else C{$XDG_STATE_HOME/netd}, else
    C{~/.local/state/netd}.
    """
    systemd = environ.get("STATE_DIRECTORY", "")
    if systemd:
        return systemd.split(":")[0]
    xdg = environ.get("XDG_STATE_HOME", "")
    if xdg:
        return os.path.join(xdg, "netd")
    home = environ.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, ".local", "state", "netd")


@attrs.frozen
class DevelopmentSet:
    """
    The files of a development set in one folder.
    """

    directory: str

    @property
    def ca(self) -> str:
        return os.path.join(self.directory, "ca.pem")

    @property
    def caKey(self) -> str:
        return os.path.join(self.directory, "ca-key.pem")

    @property
    def server(self) -> str:
        return os.path.join(self.directory, "server.pem")

    @property
    def serverKey(self) -> str:
        return os.path.join(self.directory, "server-key.pem")

    @property
    def client(self) -> str:
        return os.path.join(self.directory, "client.pem")

    @property
    def clientKey(self) -> str:
        return os.path.join(self.directory, "client-key.pem")


def _loadCertificate(folder: int | None, name: str) -> x509.Certificate | None:
    """
    A certificate from a PEM file (see L{readFileAt}), or L{None} if it is
    missing, unreadable or malformed.
    """
    try:
        return x509.load_pem_x509_certificate(readFileAt(folder, name))
    except (OSError, ValueError):
        return None


def _load(folder: int | None, certificateName: str, keyName: str) -> KeyAndCertificate | None:
    """
    A certificate and key from PEM files (see L{readFileAt}), or L{None} if
    either is missing, unreadable or malformed, or if they do not belong
    together.
    """
    certificate = _loadCertificate(folder, certificateName)
    if certificate is None:
        return None
    try:
        key = serialization.load_pem_private_key(readFileAt(folder, keyName), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        return None
    if publicKeyBytes(key.public_key()) != publicKeyBytes(certificate.public_key()):
        return None
    return KeyAndCertificate(certificate, key)


def _current(certificate: x509.Certificate, now: datetime.datetime) -> bool:
    """
    Whether a certificate is valid now and for at least L{RENEW_BEFORE} more.
    """
    return certificate.not_valid_before_utc <= now and now + RENEW_BEFORE < certificate.not_valid_after_utc


def _signedBy(certificate: x509.Certificate, ca: x509.Certificate) -> bool:
    """
    Whether a certificate was issued by C{ca}.
    """
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception):
        return False
    return True


@attrs.frozen
class _Leaf:
    """
    One end-entity certificate of a development set: its files and names.
    """

    certificate: str
    key: str
    names: tuple[str, ...]
    commonName: str
    usage: Literal["server", "client"]


_LEAVES = (
    _Leaf("server.pem", "server-key.pem", SERVER_NAMES, "localhost", "server"),
    _Leaf("client.pem", "client-key.pem", (CLIENT_DNS_NAME,), CLIENT_COMMON_NAME, "client"),
)


def _fits(
    leaf: KeyAndCertificate | None, ca: x509.Certificate | None, now: datetime.datetime, keyType: KeyType
) -> bool:
    """
    Whether a development set's end-entity certificate can be kept: it is
    current, signed by the set's CA, and of the wanted key type.
    """
    if leaf is None or ca is None:
        return False
    return _current(leaf.certificate, now) and _signedBy(leaf.certificate, ca) and keyTypeOf(leaf.key) == keyType


def ensureDevelopmentSet(directory: str, *, keyType: KeyType = "ecdsa") -> tuple[DevelopmentSet, list[str]]:
    """
    Make sure C{directory} holds a current development set, making only what is
    missing, unreadable, expired (or about to), or no longer matches; the CA is
    kept while current so that clients go on trusting it, and a set that needs
    nothing is only read, so a process that may not write the folder can check it.

    @return: the set's files, and the paths of the files made now.
    """
    files = DevelopmentSet(directory)
    folder = openFolder(directory)
    try:
        now = utcNow()
        made: list[str] = []
        caCertificate = _loadCertificate(folder, "ca.pem")
        if caCertificate is not None and not _constrained(caCertificate):
            log.warn(
                "the development CA {ca} has no name constraints (made by an older netd): making a new one, which "
                "may vouch only for localhost, .test, .invalid and loopback addresses; clients must trust the new CA",
                ca=files.ca,
            )
            caCertificate = None
        if caCertificate is not None and not _current(caCertificate, now):
            caCertificate = None
        stale = [
            leaf
            for leaf in _LEAVES
            if not _fits(_load(folder, leaf.certificate, leaf.key), caCertificate, now, keyType)
        ]
        if caCertificate is not None and not stale:
            return files, made
        ca = _load(folder, "ca.pem", "ca-key.pem") if caCertificate is not None else None
        if ca is None:
            ca = makeCA(keyType=keyType, permitted=DEVELOPMENT_PERMITTED)
            ca.writeAt(folder, "ca.pem", "ca-key.pem")
            made += [files.ca, files.caKey]
            stale = list(_LEAVES)
        for leaf in stale:
            issue(ca, leaf.names, commonName=leaf.commonName, usage=leaf.usage, keyType=keyType).writeAt(
                folder, leaf.certificate, leaf.key
            )
            made += [os.path.join(directory, leaf.certificate), os.path.join(directory, leaf.key)]
        return files, made
    finally:
        os.close(folder)


def autoCertificate(stateDir: str) -> tuple[DevelopmentSet, list[str]]:
    """
    The development set of C{certificate = "auto"}: the C{tls/} folder of the
    state directory, made or renewed as needed (see L{ensureDevelopmentSet}).

    After netd dropped root, that folder is root's and the user may not
    write it: a set that needs renewing then keeps being served as it is,
    with a warning that a restart (as root) renews it.

    @raise OSError: when the set cannot be made and there is no server
        certificate and key to keep serving.
    """
    directory = os.path.join(stateDir, "tls")
    try:
        return ensureDevelopmentSet(directory)
    except PermissionError as e:
        files = DevelopmentSet(directory)
        if _load(None, files.server, files.serverKey) is None:
            raise
        log.warn(
            "cannot renew the development certificates in {directory} ({error}): serving the current ones; "
            "netd renews them when it starts again as root",
            directory=directory,
            error=e.strerror or str(e),
        )
        return files, []


@attrs.frozen
class BadCertificate:
    """
    One deliberately defective server certificate.

    @ivar name: its file name without C{.pem} (also its name in tests and docs).
    @ivar defect: what is wrong with it.
    @ivar clientError: what a correct client that trusts the development CA
        and connects to C{localhost} must fail with (OpenSSL's verify error,
        which Python's ssl and curl report too).
    """

    name: str
    defect: str
    clientError: str

    def paths(self, directory: str) -> tuple[str, str]:
        """
        Its certificate and key files in a certificate folder.
        """
        return (
            os.path.join(directory, "bad", f"{self.name}.pem"),
            os.path.join(directory, "bad", f"{self.name}-key.pem"),
        )


BAD_CERTIFICATES = (
    BadCertificate(
        "expired",
        "signed by the development CA for localhost, 127.0.0.1 and ::1, but expired a year ago",
        "certificate has expired (X509_V_ERR_CERT_HAS_EXPIRED)",
    ),
    BadCertificate(
        "not-yet-valid",
        "signed by the development CA for localhost, 127.0.0.1 and ::1, but valid only from a year from now",
        "certificate is not yet valid (X509_V_ERR_CERT_NOT_YET_VALID)",
    ),
    BadCertificate(
        "wrong-host",
        f"signed by the development CA and current, but only for {WRONG_HOST}",
        'hostname mismatch (X509_V_ERR_HOSTNAME_MISMATCH; Python: "Hostname mismatch, certificate is not '
        'valid for \'localhost\'"; curl: "no alternative certificate subject name matches target host name")',
    ),
    BadCertificate(
        "self-signed",
        "for localhost, 127.0.0.1 and ::1 and current, but signed by its own key",
        "self-signed certificate (X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT)",
    ),
    BadCertificate(
        "unknown-ca",
        "for localhost, 127.0.0.1 and ::1 and current, but signed by a CA nobody has (not written anywhere)",
        "unable to get local issuer certificate (X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY)",
    ),
)


def makeBadCertificate(bad: BadCertificate, ca: KeyAndCertificate, *, keyType: KeyType = "ecdsa") -> KeyAndCertificate:
    """
    Make the certificate of one L{BadCertificate} entry, signed (where it is
    signed by a CA at all) by C{ca}.
    """
    now = utcNow()
    year = datetime.timedelta(days=365)
    names = list(SERVER_NAMES)
    if bad.name == "expired":
        return issue(ca, names, keyType=keyType, notBefore=now - 2 * year, notAfter=now - year)
    if bad.name == "not-yet-valid":
        return issue(ca, names, keyType=keyType, notBefore=now + year, notAfter=now + 2 * year)
    if bad.name == "wrong-host":
        return issue(ca, [WRONG_HOST], keyType=keyType)
    if bad.name == "self-signed":
        return issue(None, names, keyType=keyType)
    if bad.name == "unknown-ca":
        return issue(makeCA("netd unknown CA", keyType=keyType), names, keyType=keyType)
    raise ValueError(f"unknown bad certificate {bad.name!r}")


def writeBadCertificates(directory: str, *, keyType: KeyType = "ecdsa") -> list[tuple[BadCertificate, str, str]]:
    """
    Write every bad certificate into C{directory}/bad/, signed by the
    development CA of C{directory} (made first if it is not there).

    @return: each entry with its certificate and key paths.
    """
    ensureDevelopmentSet(directory, keyType=keyType)
    folder = openFolder(directory)
    try:
        ca = _load(folder, "ca.pem", "ca-key.pem")
        if ca is None:
            raise OSError(
                errno.ENOENT, "the development CA and its key cannot be read", os.path.join(directory, "ca.pem")
            )
        badFolder = folderAt(folder, "bad", 0o700)
    finally:
        os.close(folder)
    written = []
    try:
        for bad in BAD_CERTIFICATES:
            certificatePath, keyPath = bad.paths(directory)
            makeBadCertificate(bad, ca, keyType=keyType).writeAt(
                badFolder, os.path.basename(certificatePath), os.path.basename(keyPath)
            )
            written.append((bad, certificatePath, keyPath))
    finally:
        os.close(badFolder)
    return written
