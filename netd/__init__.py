"""
netd: network protocol services from one config file, on Twisted.

The plugin contract is in L{netd.interfaces}; a plugin's schema is written with
L{netd.config.options}; L{netd.registry.PluginContext} is what a plugin is given.
"""

#: The one source of netd's version: setuptools reads it for the distribution
#: (pyproject.toml), C{netd --version} prints it, and CHANGELOG.md has an entry
#: for it.
__version__ = "0.2.0"
