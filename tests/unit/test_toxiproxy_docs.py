"""
The toxiproxy API's calls in the docs run: each curl line to its documented
address (C{http://127.0.0.1:8474}), in the order the docs give them, is sent
to the API over in-memory HTTP and answers 2xx.
"""

from __future__ import annotations

import shlex
from urllib.parse import urlsplit

import pytest

from .test_admin import request
from .test_docs import DOC_PAGES, ROOT
from .test_docs_examples import TOXIPROXY_ORIGIN
from .test_toxiproxy_api import toxiproxy


def toxiproxyCurls() -> list[tuple[str, str]]:
    """
    Every curl line of the docs to the toxiproxy API, with its page and line.
    """
    found = []
    for page in DOC_PAGES:
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith("curl ") and TOXIPROXY_ORIGIN in stripped:
                found.append((f"{page.relative_to(ROOT)}:{number}", stripped))
    return found


CURLS = toxiproxyCurls()


def parseCurl(command: str) -> tuple[str, str, bytes, dict[str, str]]:
    """
    The method, path, body and headers of a curl command.
    """
    words = shlex.split(command)
    method, body, headers, path = "GET", b"", {}, ""
    for index, word in enumerate(words):
        if word == "-X":
            method = words[index + 1]
        elif word == "-d":
            body = words[index + 1].encode()
        elif word == "-H":
            name, _, value = words[index + 1].partition(":")
            headers[name.strip()] = value.strip()
        elif word.startswith(TOXIPROXY_ORIGIN):
            path = urlsplit(word).path
    return method, path, body, headers


def test_docsHaveToxiproxyCalls() -> None:
    """
    The docs have curl lines to the toxiproxy API that create and change, so the check cannot pass on nothing.
    """
    assert {parseCurl(command)[0] for _, command in CURLS} >= {"GET", "POST", "DELETE"}


def test_documentedCallsAnswer() -> None:
    """
    The docs' curl lines to the toxiproxy API, sent in order, each answer 2xx.
    """
    _, reactor = toxiproxy()
    for where, command in CURLS:
        method, path, body, headers = parseCurl(command)
        response = request(reactor.site(), method, path, body=body, headers=headers)
        assert 200 <= response.code < 300, (where, response.code, response.body)


def test_callCheckCatchesAWrongCall() -> None:
    """
    A call the API does not have fails the check.
    """
    _, reactor = toxiproxy()
    method, path, body, headers = parseCurl(f"curl -s -X PUT {TOXIPROXY_ORIGIN}/proxies")
    with pytest.raises(AssertionError):
        assert 200 <= request(reactor.site(), method, path, body=body, headers=headers).code < 300
