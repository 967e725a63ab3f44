"""
The C{dns-proxy} plugin: a caching DNS forwarder with static test records,
over UDP, TCP and DNS over TLS.  The README's design notes map its modules.
"""

from __future__ import annotations

import ipaddress
import os

import attrs

from netd.bases import Plugin
from netd.config.options import between, option
from netd.interfaces import PluginContext
from netd.tls.options import CABundlePath

from .cache import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRY_BYTES, AnswerCache
from .handler import (
    DEFAULT_MAX_INFLIGHT,
    DEFAULT_MAX_INFLIGHT_PER_CLIENT,
    DEFAULT_MAX_INFLIGHT_PER_CONNECTION,
    AccessList,
    DNSProxy,
)
from .records import StaticRecords
from .resolver import UpstreamResolver
from .scripts import Script
from .upstream import Upstream, expandUpstreams


def _networks(value: tuple[str, ...]) -> str | None:
    """
    A check that every C{allow} entry is an IP network (an address alone is a /32 or /128).
    """
    for i, text in enumerate(value):
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            return f"[{i}] {text!r} is not an IP network such as '127.0.0.0/8' or '::1/128'"
    return None


def _readableFile(value: str | None) -> str | None:
    """
    A check that a path names a readable file.
    """
    if value is not None and not os.access(value, os.R_OK):
        return f"{value!r} is not a readable file"
    return None


def _nonEmpty(value: tuple[object, ...]) -> str | None:
    """
    A check that a list has at least one entry.
    """
    return None if value else "expected at least one entry"


@attrs.frozen
class DNSProxyOptions:
    """
    The keys of a dns-proxy service.
    """

    upstreams: tuple[Upstream, ...] = option(
        (Upstream.fromConfig("system"),),
        help="Where queries are forwarded, tried in order: udp:HOST[:PORT], tcp:HOST[:PORT], "
        "tls:HOST[:PORT]:name=SERVERNAME (DNS over TLS), or system (the nameservers of /etc/resolv.conf).",
        checks=(_nonEmpty,),
    )
    records: StaticRecords = option(
        StaticRecords(),
        help="Static records answered locally: a table of names (wildcards like *.svc.test allowed) to "
        "their records by type (A, AAAA, NS, MX, CNAME, TXT, SRV, PTR) and ttl.",
    )
    scripts: tuple[Script, ...] = option(
        (),
        help="Scripted answers: entries (tables) of name (wildcards allowed), qtype, an action (rcode, truncate, "
        "delay, drop, spoof) and a schedule (first, every, probability, seed); the first entry that matches a "
        "query and whose schedule applies acts on it, before the static records, the cache and the upstreams.",
    )
    allow: tuple[str, ...] = option(
        ("127.0.0.0/8", "::1/128"),
        help="Networks whose clients may query; others get REFUSED.",
        checks=(_networks,),
    )
    timeout: float = option(
        2.0, help="Seconds one upstream gets to answer before the next is tried.", checks=(between(0.01, 60),)
    )
    deadline: float = option(
        5.0, help="Seconds a query may take in all before the client gets SERVFAIL.", checks=(between(0.01, 300),)
    )
    cache_size: int = option(
        10000,
        help="Answers cached at most (least recently used evicted); 0 turns the cache off.",
        checks=(between(0, 10_000_000),),
    )
    # The bounds of issue 13 (cache bytes, queries in flight), together.
    cache_bytes: int = option(
        DEFAULT_MAX_BYTES,
        help="Bytes the cache may hold at most, answers, keys and bookkeeping counted (least recently used evicted past it).",
        checks=(between(0, 2**40),),
    )
    cache_entry_bytes: int = option(
        DEFAULT_MAX_ENTRY_BYTES,
        help="The largest answer, in bytes, that is cached; larger ones are forwarded but not kept.",
        checks=(between(512, 65535),),
    )
    max_inflight: int = option(
        DEFAULT_MAX_INFLIGHT,
        help="Queries waiting for the upstreams at most, from all clients; past it queries that would go upstream get REFUSED.",
        checks=(between(1, 1_000_000),),
    )
    max_inflight_per_client: int = option(
        DEFAULT_MAX_INFLIGHT_PER_CLIENT,
        help="Queries waiting for the upstreams at most from one client address; past it that address gets REFUSED for them.",
        checks=(between(1, 1_000_000),),
    )
    max_inflight_per_connection: int = option(
        DEFAULT_MAX_INFLIGHT_PER_CONNECTION,
        help="Queries waiting for their answers at most on one TCP or TLS connection; past it the next ones on it get REFUSED.",
        checks=(between(1, 65535),),
    )
    min_ttl: int = option(
        0, help="Seconds an answer stays cached at least, whatever its TTL.", checks=(between(0, 86400),)
    )
    max_ttl: int = option(86400, help="Seconds an answer stays cached at most.", checks=(between(0, 604800),))
    max_negative_ttl: int = option(
        3600,
        help="Seconds a negative answer (NXDOMAIN, NODATA; RFC 2308) stays cached at most.",
        checks=(between(0, 86400),),
    )
    max_fails: int = option(
        2,
        help="Consecutive failures after which an upstream is marked down and probed until it answers.",
        checks=(between(1, 100),),
    )
    health_check: float = option(
        0.5, help="Seconds between probes of an upstream marked down.", checks=(between(0.05, 3600),)
    )
    ca_bundle: CABundlePath | None = option(
        None,
        help="PEM file of the CAs that DNS-over-TLS upstreams' certificates must chain to; the system's when unset.",
        checks=(_readableFile,),
    )
    udp_size: int = option(1232, help="The EDNS UDP payload size netd announces.", checks=(between(512, 4096),))
    # Reaching the upstreams: source ports, 0x20, stream connections.
    randomize_case: bool = option(
        True,
        help="Send the name of each query to a UDP upstream with its letters in a random case (DNS 0x20) and accept "
        "only an answer in the same case; an upstream that does not keep the case is detected and asked without it.",
    )
    udp_port_queries: int = option(
        64,
        help="Queries sent from one UDP source port before a socket on a new random port takes its place "
        "(1: a new port for every query).",
        checks=(between(1, 4096),),
    )
    udp_port_lifetime: float = option(
        1.0,
        help="Seconds a UDP source port takes new queries before a socket on a new random port takes its place.",
        checks=(between(0.01, 3600),),
    )
    stream_connections: int = option(
        4,
        help="Connections open at most to one TCP or TLS upstream; a query that finds them all full fails over to "
        "the next upstream at once (counted upstream_busy).",
        checks=(between(1, 64),),
    )
    stream_pipeline: int = option(
        1024,
        help="Queries in flight at most on one connection to a TCP or TLS upstream; past it another connection opens.",
        checks=(between(1, 16384),),
    )
    log_queries: bool = option(False, help="Log one line per query: client, name, type, rcode, source, time.")

    def crossCheck(self) -> list[tuple[str, str]]:
        """
        Rules that span several keys: (key, problem) pairs.
        """
        problems = []
        if self.min_ttl > self.max_ttl:
            problems.append(("min_ttl", f"{self.min_ttl} is more than max_ttl ({self.max_ttl})"))
        if self.cache_size and self.cache_entry_bytes > self.cache_bytes:
            problems.append(
                ("cache_entry_bytes", f"{self.cache_entry_bytes} is more than cache_bytes ({self.cache_bytes})")
            )
        if self.timeout > self.deadline:
            problems.append(("timeout", f"{self.timeout} is more than deadline ({self.deadline})"))
        return problems


class DNSProxyPlugin(Plugin):
    """
    The C{dns-proxy} plugin.
    """

    name = "dns-proxy"
    summary = "caching DNS forwarder with static records, over UDP and TCP (u16 framing)"
    optionsType = DNSProxyOptions
    transports = frozenset({"stream", "datagram"})
    framings = ("u16",)

    def build(self, options: DNSProxyOptions, context: PluginContext) -> DNSProxy:
        """
        The proxy of one service: its cache, its upstreams, its static records.
        """
        upstreams = expandUpstreams(list(options.upstreams))
        if not upstreams:
            context.log.warn(
                "no upstream: 'system' found no nameserver in /etc/resolv.conf; "
                "names other than the static records get SERVFAIL"
            )
        resolver = UpstreamResolver(
            context.reactor,
            upstreams,
            timeout=options.timeout,
            deadline=options.deadline,
            maxFails=options.max_fails,
            healthInterval=options.health_check,
            caBundle=options.ca_bundle,
            counters=context.counters,
            log=context.log,
            udpPortQueries=options.udp_port_queries,
            udpPortLifetime=options.udp_port_lifetime,
            randomizeCase=options.randomize_case,
            streamConnections=options.stream_connections,
            streamPipeline=options.stream_pipeline,
        )
        cache = AnswerCache(
            maxEntries=options.cache_size,
            minTTL=options.min_ttl,
            maxTTL=options.max_ttl,
            maxNegativeTTL=options.max_negative_ttl,
            clock=context.reactor,
            udpSize=options.udp_size,
            maxBytes=options.cache_bytes,
            maxEntryBytes=options.cache_entry_bytes,
        )
        return DNSProxy(
            reactor=context.reactor,
            records=options.records,
            scripts=options.scripts,
            cache=cache,
            resolver=resolver,
            access=AccessList(options.allow),
            counters=context.counters,
            log=context.log,
            logQueries=options.log_queries,
            udpSize=options.udp_size,
            events=context.events,
            maxInflight=options.max_inflight,
            maxInflightPerClient=options.max_inflight_per_client,
            maxInflightPerConnection=options.max_inflight_per_connection,
        )


plugin = DNSProxyPlugin()
