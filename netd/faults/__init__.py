"""
Faults on purpose: what netd does wrong, when asked, so that clients' tests can
see how they cope.  Each fault type is one class, its config keys and its
behaviour (L{base}); the families define them where they act (L{stream},
L{tls}, L{frames}, L{datagrams}); L{spec} holds the registry and a service's
list, L{schedule} says which events a fault applies to, and L{active} is a
running service's faults, the control API's table.
"""
