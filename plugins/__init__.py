"""
netd's built-in protocol plugins, installed as the C{netd_plugins} package.

Each module here with a top-level C{plugin} object is a plugin; netd finds it
without any other change (see L{netd.registry}).
"""
