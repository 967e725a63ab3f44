"""
toxiproxy's toxics as netd faults (L{netd.daemon.toxiproxy.toxics}): the
defaults toxiproxy gives a toxic, the fault each type becomes, and what netd
refuses with toxiproxy's 400.
"""

from __future__ import annotations

from typing import Any

import pytest

from netd.daemon.toxiproxy.proxies import ProxyError, listenEndpoint, upstreamEndpoint
from netd.daemon.toxiproxy.resource import normalListen
from netd.daemon.toxiproxy.toxics import TOXIC_TYPES, Toxic, ToxicError, faultList
from netd.faults.spec import FAULT_TYPES


def test_defaultsAreToxiproxys() -> None:
    """
    A toxic with only a type is downstream, of toxicity 1, named TYPE_STREAM, with every attribute 0.
    """
    toxic = Toxic.fromJSON({"type": "slicer"})
    assert toxic.toJSON() == {
        "attributes": {"average_size": 0, "size_variation": 0, "delay": 0},
        "name": "slicer_downstream",
        "type": "slicer",
        "stream": "downstream",
        "toxicity": 1.0,
    }


@pytest.mark.parametrize(
    ("kind", "attributes", "fault"),
    [
        ("latency", {"latency": 100, "jitter": 10}, {"type": "latency", "ms": 100, "jitter": 10}),
        ("bandwidth", {"rate": 64}, {"type": "bandwidth", "rate": 64000}),
        (
            "slicer",
            {"average_size": 8, "size_variation": 2, "delay": 1500},
            {"type": "slice", "size": 8, "variation": 2, "delay": 1.5},
        ),
        ("limit_data", {"bytes": 10}, {"type": "close_after", "bytes": 10}),
        ("reset_peer", {"timeout": 250}, {"type": "reset_on_data", "ms": 250}),
        ("timeout", {"timeout": 0}, {"type": "blackhole", "close_after_ms": 0}),
        ("timeout", {"timeout": 500}, {"type": "blackhole", "close_after_ms": 500}),
        ("slow_close", {"delay": 300}, {"type": "slow_close", "ms": 300}),
    ],
)
def test_eachTypeBecomesItsFault(kind: str, attributes: dict[str, int], fault: dict[str, Any]) -> None:
    """
    Each toxic type becomes its netd fault, downstream as to_client and upstream as from_client, and the fault list decodes.
    """
    for stream, direction in (("downstream", "to_client"), ("upstream", "from_client")):
        toxic = Toxic.fromJSON({"type": kind, "stream": stream, "attributes": attributes})
        assert toxic.fault() == {**fault, "direction": direction}
        [decoded] = faultList([toxic])
        assert decoded.typeName == fault["type"]


def test_everyTypeMapsToARegisteredFault() -> None:
    """
    The fault each toxic type becomes is a registered netd fault type.
    """
    for kind, (names, mapping) in TOXIC_TYPES.items():
        table = mapping(dict.fromkeys(names, 1))
        assert table is not None and table["type"] in FAULT_TYPES, kind


def test_toxicityIsTheProbability() -> None:
    """
    A toxicity under 1 becomes the fault's probability per connection; 1 leaves the fault unconditional.
    """
    fault = Toxic.fromJSON({"type": "latency", "toxicity": 0.5}).fault()
    assert fault is not None and fault["probability"] == 0.5
    assert "probability" not in (Toxic.fromJSON({"type": "latency", "toxicity": 1}).fault() or {})


def test_bandwidthZeroIsNoFault() -> None:
    """
    A bandwidth of rate 0, which toxiproxy lets through unlimited, becomes no fault but is kept as a toxic.
    """
    toxic = Toxic.fromJSON({"type": "bandwidth"})
    assert toxic.fault() is None
    assert len(faultList([toxic])) == 0


def test_updateKeepsWhatIsNotGiven() -> None:
    """
    An update replaces the attributes and toxicity given and keeps the others, as toxiproxy's does.
    """
    toxic = Toxic.fromJSON({"type": "latency", "name": "slow", "attributes": {"latency": 100, "jitter": 5}})
    updated = toxic.updated({"attributes": {"latency": 300}})
    assert (updated.name, dict(updated.attributes), updated.toxicity) == ("slow", {"latency": 300, "jitter": 5}, 1.0)
    assert toxic.updated({"toxicity": 0.25}).toxicity == 0.25


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"type": "latency", "stream": "sideways"}, "stream was invalid"),
        ({"type": "lag"}, "invalid toxic type"),
        ({"type": "latency", "attributes": {"latency": "100"}}, "must be an integer"),
        ({"type": "latency", "toxicity": "high"}, "toxicity must be a number"),
        ([], "expected a JSON object"),
    ],
)
def test_badToxicsAre400(body: object, message: str) -> None:
    """
    What toxiproxy refuses with 400 is refused with 400 and a message saying what is wrong.
    """
    with pytest.raises(ToxicError, match=message) as raised:
        Toxic.fromJSON(body)
    assert raised.value.status == 400


def test_outOfRangeNamesTheToxic() -> None:
    """
    An attribute netd's fault refuses (a latency past ten minutes, a slice of 0 bytes) is a 400 naming the toxic and the fault's key.
    """
    with pytest.raises(ToxicError, match=r"toxic 'slow' \(netd fault latency, key ms\)"):
        faultList([Toxic.fromJSON({"type": "latency", "name": "slow", "attributes": {"latency": 10**9}})])
    with pytest.raises(ToxicError, match="netd fault slice, key size"):
        faultList([Toxic.fromJSON({"type": "slicer"})])


@pytest.mark.parametrize(
    ("listen", "endpoint"),
    [
        ("127.0.0.1:26379", "tcp:26379:interface=127.0.0.1"),
        ("localhost:0", "tcp:0:interface=127.0.0.1"),
        ("[::1]:8080", "tcp6:8080:interface=\\:\\:1"),
        (":8080", "tcp:8080"),
        ("", "tcp:0:interface=127.0.0.1"),
    ],
)
def test_listenBecomesAListenString(listen: str, endpoint: str) -> None:
    """
    toxiproxy's listen HOST:PORT becomes netd's listen string; localhost is 127.0.0.1 and an empty listen a loopback port of the system's choice.
    """
    assert listenEndpoint(listen) == endpoint


def test_upstreamBecomesAClientEndpoint() -> None:
    """
    toxiproxy's upstream HOST:PORT becomes a tcp: client endpoint, an IPv6 address escaped.
    """
    assert upstreamEndpoint("redis.internal:6379") == "tcp:host=redis.internal:port=6379"
    assert upstreamEndpoint("[::1]:6379") == "tcp:host=\\:\\:1:port=6379"


@pytest.mark.parametrize("text", ["db.example:5432", "127.0.0.1", "127.0.0.1:99999", "a:b:c"])
def test_badListenIs400(text: str) -> None:
    """
    A listen that is not an address netd can listen on (a host name other than localhost, no port, a port out of range) is a 400.
    """
    with pytest.raises(ProxyError) as raised:
        listenEndpoint(text)
    assert raised.value.status == 400


def test_normalListenIsTheBoundForm() -> None:
    """
    A listen compares with a bound proxy's in the form a bound address is reported in.
    """
    assert normalListen("localhost:26379") == "127.0.0.1:26379"
    assert normalListen("[::1]:5") == "[::1]:5"
