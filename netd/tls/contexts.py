"""
A service's TLS settings turned into pyOpenSSL contexts (L{ServerTLS}): the
files loaded and checked before anything listens, one context per
certificate (the default one and one per C{sni} name), the ALPN, SNI and
client-certificate callbacks, and the contexts made anew every
C{session_ticket_rotation} seconds for new session-ticket keys.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import os
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from netd.tls.devcerts import autoCertificate, defaultStateDir, utcNow
from netd.tls.failures import X509_ERRORS, WatchesHandshake, classifyError, errorText, noteFailure
from netd.tls.keys import (
    ClientNames,
    KeyPair,
    TLSSetupError,
    certificateNames,
    describeSubject,
    keyFileMode,
    loadCertificates,
    loadKeyPair,
    validityProblem,
)
from netd.tls.options import (
    ALLOW_TYPES,
    AUTO,
    GROUPS,
    HYBRID_GROUP,
    PROFILES,
    TLS13_CIPHERSUITES,
    TLSOptions,
    TLSVersion,
    parseAllowEntry,
)
from netd.tls.pump import setGroupList

_SESSION_TIMEOUT = 3600
"""
Seconds a TLS session (ID or ticket) can be resumed for, at most: no longer
than C{session_ticket_rotation} either.
"""


@functools.cache
def groupList() -> str | None:
    """
    The key-exchange groups every context offers unless C{tls.groups} says
    otherwise: L{HYBRID_GROUP} then L{GROUPS} when this OpenSSL knows the
    hybrid, else L{GROUPS}; L{None} when the groups cannot be set (OpenSSL's
    defaults stay).
    """
    probe = SSL.Context(SSL.TLS_SERVER_METHOD)
    for groups in (f"{HYBRID_GROUP}:{GROUPS}", GROUPS):
        if setGroupList(probe, groups):
            return groups
    return None


def setGroups(context: SSL.Context, groups: tuple[str, ...] | None) -> None:
    """
    Offer C{groups} on a context, or when L{None} those of L{groupList}
    (when they can be set).

    @raise TLSSetupError: OpenSSL does not know one of C{groups}, or this
        pyOpenSSL cannot set any.
    """
    if groups is None:
        default = groupList()
        if default is not None:
            setGroupList(context, default)
        return
    if groupList() is None:
        raise TLSSetupError(
            "tls.groups: this pyOpenSSL cannot set key-exchange groups; remove groups", ("tls", "groups")
        )
    unknown = [name for name in groups if not setGroupList(context, name)]
    if unknown or not setGroupList(context, ":".join(groups)):
        raise TLSSetupError(
            f"tls.groups: OpenSSL {SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode('ascii', 'replace')} does not know "
            + ", ".join(repr(name) for name in unknown or groups)
            + f"; netd's default here is {groupList()}",
            ("tls", "groups"),
        )


class ServerConnection(SSL.Connection):
    """
    The server side of a connection, which tells its protocol (a
    L{WatchesHandshake}) how the handshake ends: Twisted's TLS protocol has no
    public hook for either outcome (its C{IHandshakeListener} call goes to
    the wrapped protocol, and so does a failure's reason).
    """

    def do_handshake(self) -> None:
        """
        Go on with the handshake; note why it fails, or say that it finished.
        """
        try:
            super().do_handshake()
        except SSL.WantReadError:
            raise
        except SSL.Error as e:
            noteFailure(self, *classifyError(e))
            raise
        protocol = self.get_app_data()
        if isinstance(protocol, WatchesHandshake):
            protocol.handshakeSucceeded()


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The TLS settings of one service, checked and turned into pyOpenSSL
    contexts; makes the server side of each connection.

    @ivar defaultPair: the certificate served when no C{sni} entry matches.
    @ivar pairs: the C{sni} certificates, by lowercased name.
    @ivar made: files that C{certificate = "auto"} made now (empty when it
        reused them, or when the certificate is a file).
    """

    def __init__(
        self,
        options: TLSOptions,
        *,
        serviceName: str,
        log: Logger,
        stateDir: str | None = None,
        now: datetime.datetime | None = None,
    ) -> None:
        """
        Load and check every file the options name.

        @param stateDir: where C{certificate = "auto"} keeps its files (its
            C{tls/} folder); L{netd.tls.devcerts.defaultStateDir} when unset.
        @param now: the time certificates' validity is checked against.
        @raise TLSSetupError: a file is missing, unreadable or malformed, a
            key does not match its certificate, or OpenSSL does not know a
            group of C{groups}.  An expired or not yet valid
            certificate is only warned about: the deliberately bad ones must
            be servable.
        """
        self.options = options
        self.serviceName = serviceName
        self.log = log
        self.made: list[str] = []
        now = now or utcNow()
        certificate: str = options.certificate
        privateKey: str | None = options.private_key
        if certificate == AUTO:
            stateDir = stateDir or defaultStateDir()
            try:
                files, self.made = autoCertificate(stateDir)
            except OSError as e:
                raise TLSSetupError(
                    f'tls.certificate = "auto": cannot make the development certificate in '
                    f"{os.path.join(stateDir, 'tls')!r}: {e.strerror or e}; set [daemon] state_dir to a writable folder",
                    ("tls", "certificate"),
                ) from None
            certificate, privateKey = files.server, files.serverKey
            # The first start says where it wrote files and how to trust them;
            # later starts only say which set they serve.
            if self.made:
                log.info(
                    "made the development certificate for localhost, 127.0.0.1 and ::1 in {directory}; "
                    "clients trust it with the CA {ca} (curl --cacert {ca}, openssl s_client -CAfile {ca}; "
                    "netd certs prints more)",
                    directory=files.directory,
                    ca=files.ca,
                )
            else:
                log.info(
                    "using the development certificate for localhost, 127.0.0.1 and ::1 in {directory}; "
                    "clients trust it with the CA {ca}",
                    directory=files.directory,
                    ca=files.ca,
                )
        assert privateKey is not None
        self.defaultPair = loadKeyPair(certificate, privateKey, "tls", ("tls",))
        self.pairs = {
            name.lower(): loadKeyPair(entry.certificate, entry.private_key, f'tls.sni."{name}"', ("tls", "sni", name))
            for name, entry in (options.sni or {}).items()
        }
        for where, pair in [("tls", self.defaultPair)] + [(f'tls.sni."{n}"', p) for n, p in self.pairs.items()]:
            mode = keyFileMode(pair.keyPath)
            if mode is not None:
                log.warn(
                    "{where} {path} is readable by its group or by everyone (mode {mode}); "
                    "make it readable by netd's user only (chmod 600)",
                    where=f"{where}.private_key",
                    path=pair.keyPath,
                    mode=f"{mode:04o}",
                )
            problem = validityProblem(pair.certificate, now)
            if problem is not None:
                log.warn(
                    "{where}.certificate {path} {problem}; clients that check it will refuse it",
                    where=where,
                    path=pair.certificatePath,
                    problem=problem,
                )
        self.clientCAs: list[x509.Certificate] = []
        if options.client_ca is not None:
            self.clientCAs = loadCertificates(options.client_ca, "tls.client_ca", ("tls", "client_ca"))
            for ca in self.clientCAs:
                problem = validityProblem(ca, now)
                if problem is not None:
                    log.warn(
                        "tls.client_ca {path}: the CA {subject} {problem}; no client certificate will verify against it",
                        path=options.client_ca,
                        subject=describeSubject(ca),
                        problem=problem,
                    )
        if groupList() is None:
            log.warn("tls: this pyOpenSSL cannot set key-exchange groups; OpenSSL's defaults are offered")
        allow = [parseAllowEntry(entry) for entry in options.client_allow]
        self._allow = ClientNames(
            *(frozenset(name for kind, name in allow if kind == wanted) for wanted in ALLOW_TYPES)
        )
        self._allowAny = not allow
        self._alpn = [name.encode("ascii") for name in options.alpn]
        self._sessionContext = b"netd:" + hashlib.sha256(serviceName.encode("utf-8")).hexdigest()[:24].encode("ascii")
        self._rotation: LoopingCall | None = None
        try:
            self._makeContexts()
        except SSL.Error as e:
            raise TLSSetupError(f"OpenSSL refused the tls settings: {errorText(e)}") from None

    def _makeContexts(self) -> None:
        """
        Make the contexts of the current certificates: the default one, with
        the SNI callback when there are C{sni} entries, and one per entry.
        Each new context has its own session cache and its own session-ticket
        keys, which OpenSSL makes at random (and never changes by itself).

        @raise SSL.Error: OpenSSL refused a setting.
        """
        defaultContext = self._makeContext(self.defaultPair)
        contexts = {name: self._makeContext(pair) for name, pair in self.pairs.items()}
        if contexts:
            defaultContext.set_tlsext_servername_callback(self._serverNameReceived)
        self.defaultContext, self.contexts = defaultContext, contexts

    def startRotation(self, clock: IReactorTime) -> None:
        """
        Replace the session-ticket keys every C{session_ticket_rotation}
        seconds from now on (see L{rotateSessionKeys}); called when the
        service starts listening.
        """
        period = self.options.session_ticket_rotation
        if self._rotation is not None or not period or not self.options.session_resumption:
            return
        self._rotation = LoopingCall(self.rotateSessionKeys)
        self._rotation.clock = clock
        self._rotation.start(period, now=False)

    def stopRotation(self) -> None:
        """
        Stop replacing the keys: the service no longer listens.
        """
        if self._rotation is not None:
            if self._rotation.running:
                self._rotation.stop()
            self._rotation = None

    def rotateSessionKeys(self) -> None:
        """
        Serve new connections from new contexts of the same certificates, with new
        random session-ticket keys and an empty session cache, so that a leaked
        ticket key opens at most one period of TLS 1.2 sessions.  The previous key
        cannot be kept (pyOpenSSL has no call for ticket keys; docs/tls.md, session
        tickets); connections already open keep their contexts.
        """
        try:
            self._makeContexts()
        except SSL.Error as e:  # the settings were accepted once; keep what serves
            self.log.error("tls: cannot make new session-ticket keys: {error}", error=errorText(e))
            return
        self.log.debug("tls: new session-ticket keys; sessions from before are no longer resumed")

    def reloadFiles(self, stateDir: str | None = None) -> ServerTLS:
        """
        Load the certificate, key and CA files again, without using them yet.

        @return: the fresh settings, for L{adopt}.
        @raise TLSSetupError: a file is now missing, unreadable or malformed,
            or a key does not match its certificate; nothing changes then.
        """
        return ServerTLS(self.options, serviceName=self.serviceName, log=self.log, stateDir=stateDir)

    def adopt(self, fresh: ServerTLS) -> None:
        """
        Serve new connections with the contexts of C{fresh} (from
        L{reloadFiles}); connections already open keep theirs.
        """
        self.made = fresh.made
        self.defaultPair = fresh.defaultPair
        self.pairs = fresh.pairs
        self.clientCAs = fresh.clientCAs
        self.contexts = fresh.contexts
        self.defaultContext = fresh.defaultContext

    def _makeContext(self, pair: KeyPair) -> SSL.Context:
        """
        A pyOpenSSL context serving C{pair} with the service's settings.
        """
        options = self.options
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        flags = (
            SSL.OP_NO_SSLv2
            | SSL.OP_NO_SSLv3
            | SSL.OP_NO_COMPRESSION
            | SSL.OP_NO_RENEGOTIATION
            | SSL.OP_SINGLE_ECDH_USE
            | SSL.OP_SINGLE_DH_USE
        )
        if PROFILES[options.profile].serverPreference or options.ciphers is not None:
            # A list of mixed strength, or one the user ordered: its order wins.
            flags |= SSL.OP_CIPHER_SERVER_PREFERENCE
        if not options.session_resumption:
            flags |= SSL.OP_NO_TICKET
        context.set_options(flags)
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)
        minVersion = options.minVersion
        context.set_min_proto_version(minVersion.openssl)
        context.set_max_proto_version(options.max_version.openssl if options.max_version else 0)
        ciphers = options.tls12Ciphers
        if ciphers is not None:
            if minVersion < TLSVersion("1.2") and "@SECLEVEL" not in ciphers:
                # OpenSSL 3's default security level refuses TLS 1.0 and 1.1 outright.
                ciphers += ":@SECLEVEL=0"
            context.set_cipher_list(ciphers.encode("ascii"))
        context.set_tls13_ciphersuites(TLS13_CIPHERSUITES.encode("ascii"))
        setGroups(context, options.groups)
        context.use_certificate(pair.certificate)
        for extra in pair.chain[1:]:
            context.add_extra_chain_cert(extra)
        context.use_privatekey(pair.key)
        context.check_privatekey()
        context.set_session_id(self._sessionContext)
        if options.session_resumption:
            context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
            rotation = options.session_ticket_rotation
            context.set_timeout(min(_SESSION_TIMEOUT, int(rotation)) if rotation >= 1 else _SESSION_TIMEOUT)
        else:
            context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        if self._alpn:
            context.set_alpn_select_callback(self._selectProtocol)
        if options.client_auth != "none":
            assert options.client_ca is not None
            context.load_verify_locations(options.client_ca)
            for ca in self.clientCAs:
                context.add_client_ca(ca)
            mode = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
            if options.client_auth == "required":
                mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
            context.set_verify(mode, self._verifyClient)
        return context

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """
        The server side of a new connection, on the default context.
        """
        return ServerConnection(self.defaultContext, None)

    def contextFor(self, serverName: str | None) -> SSL.Context | None:
        """
        The context of the C{sni} entry for a name the client asked for: an
        exact entry, else a wildcard one for its parent; L{None} for the default.
        """
        if not serverName:
            return None
        name = serverName.lower().rstrip(".")
        context = self.contexts.get(name)
        if context is None and "." in name:
            context = self.contexts.get("*." + name.split(".", 1)[1])
        return context

    def _serverNameReceived(self, connection: SSL.Connection) -> None:
        """
        OpenSSL's SNI callback: switch to the certificate for the name asked for.
        """
        raw = connection.get_servername()
        name = raw.decode("ascii", "replace") if raw else None
        context = self.contextFor(name)
        if context is not None:
            connection.set_context(context)

    def _selectProtocol(self, connection: SSL.Connection, offered: list[bytes]) -> bytes:
        """
        OpenSSL's ALPN callback: the first of our protocols the client offers.
        A client offering only others is refused (RFC 7301: a fatal
        no_application_protocol alert).
        """
        for protocol in self._alpn:
            if protocol in offered:
                return protocol
        noteFailure(
            connection,
            "alpn_mismatch",
            "the client offered " + ", ".join(repr(p.decode("ascii", "replace")) for p in offered),
        )
        raise _ALPNMismatch([("netd", "", "no application protocol")])

    def _verifyClient(self, connection: SSL.Connection, certificate: Any, errno: int, depth: int, ok: int) -> bool:
        """
        OpenSSL's verify callback: note why a client certificate fails, and
        check the end-entity certificate against C{client_allow}.
        """
        try:
            if not ok:
                why = X509_ERRORS.get(errno, f"verify error {errno}")
                subject = describeSubject(certificate.to_cryptography())
                noteFailure(connection, "client_cert_untrusted", f"{why} (certificate {depth} of the chain: {subject})")
                return False
            if depth == 0 and not self._allowAny:
                leaf = certificate.to_cryptography()
                names = certificateNames(leaf)
                allow = self._allow
                if not (names.dns & allow.dns or names.uri & allow.uri or names.cn & allow.cn):
                    noteFailure(
                        connection,
                        "client_not_allowed",
                        f"{describeSubject(leaf)} (names {names.describe()}) carries no name of client_allow",
                    )
                    return False
            return True
        except Exception as e:  # an exception must not escape into OpenSSL
            noteFailure(connection, "client_cert_untrusted", f"cannot check it: {type(e).__name__}: {e}")
            return False


class _ALPNMismatch(SSL.Error):
    """
    Raised from the ALPN callback to make OpenSSL refuse the handshake.
    """
