"""
Faults on purpose: what netd does wrong, when asked, so that clients' tests can
see how they cope.  L{schedule} says which events a fault applies to; L{spec}
declares the faults and their config keys.
"""
