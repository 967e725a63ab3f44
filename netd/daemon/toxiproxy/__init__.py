"""
The toxiproxy-compatible HTTP API (C{[daemon] toxiproxy}): toxiproxy's
proxies as runtime services of the C{proxy} plugin, its toxics as their
stream faults.  L{toxics} maps a toxic to a fault, L{proxies} keeps the
proxies and their services, L{resource} answers toxiproxy's routes, and
L{server} listens.  docs/toxiproxy.md is the user's page.
"""
