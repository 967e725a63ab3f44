"""
The control API: HTTP on C{[daemon] admin}, a sibling service of the daemon
(L{netd.daemon.api.server.ControlAPI}) that sees the daemon only through
L{netd.daemon.api.served.ServedDaemon}.  One module per job: the answers
(L{replies}), the checks made on a request's headers (L{guard}), the token
files (L{tokens}), the HTTP connection handling and its cap (L{http}), the
endpoints (L{resources}) and the listener (L{server}).  docs/control-api.md
describes the endpoints.
"""
