"""
The OpenAPI 3.1 description of the control API (L{netd.daemon.api}), served at
C{GET /openapi.json} and kept in the docs as C{docs/openapi.json}.

It says every endpoint, method, status, header and body the API answers,
errors and refusals included, so that a client can be generated from it and a
fuzzer (schemathesis, in the test suite) can check netd against it.  The
fault tables of C{PUT /services/NAME/faults} are described by the same schema
builder as the config's C{faults} key (L{netd.config.schema}).
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from netd.config.schema import SchemaBuilder
from netd.metrics import PROMETHEUS_CONTENT_TYPE

MAX_BODY = 65536
"""
The largest body C{POST /reload} reads.
"""
MAX_TABLE_BODY = 2**20
"""
The largest body C{PUT /services/NAME/TABLE} and C{POST /services} read (a
table of records may be long).
"""
CHANGING_METHODS = frozenset({b"POST", b"PUT", b"PATCH", b"DELETE"})
"""
The methods that change something: they need the token whenever there is one,
and an C{Origin} of the API's own.
"""
API_VERSION = "1.0"
"""
The version of the description (OpenAPI's C{info.version}), not netd's: it
changes when the API does.
"""

_JSON = "application/json"


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    """
    A JSON body of C{schema}.
    """
    return {_JSON: {"schema": schema}}


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """
    A response whose body is the API's JSON error.
    """
    response: dict[str, Any] = {"description": description, "content": _content({"$ref": "#/components/schemas/Error"})}
    if headers:
        response["headers"] = headers
    return response


def _ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    """
    A 200 response with a JSON body of C{schema}.
    """
    return {"description": description, "content": _content(schema)}


def _ref(kind: str, name: str) -> dict[str, Any]:
    """
    A C{$ref} to C{#/components/KIND/NAME}.
    """
    return {"$ref": f"#/components/{kind}/{name}"}


def _operation(
    summary: str,
    description: str,
    responses: dict[str, Any],
    *,
    changes: bool = False,
    probe: bool = False,
    body: dict[str, Any] | None = None,
    parameters: list[dict[str, Any]] | None = None,
    operationId: str,
) -> dict[str, Any]:
    """
    One operation, with the answers every request may get added: 421 (Host),
    401 (token; not for the probes, which need none, unless they change
    something), 403 (Origin, on changes), 400/411/413/415 (a body), 500 and 503.
    """
    answers = dict(responses)
    answers.setdefault("421", _ref("responses", "MisdirectedRequest"))
    answers.setdefault("503", _ref("responses", "Busy"))
    answers.setdefault("500", _ref("responses", "InternalError"))
    if not probe or changes:
        answers.setdefault("401", _ref("responses", "Unauthorized"))
    if changes:
        answers.setdefault("403", _ref("responses", "Forbidden"))
    if body is not None:
        answers.setdefault("400", _ref("responses", "BadRequest"))
        answers.setdefault("411", _ref("responses", "LengthRequired"))
        answers.setdefault("413", _ref("responses", "ContentTooLarge"))
        answers.setdefault("415", _ref("responses", "UnsupportedMediaType"))
    operation: dict[str, Any] = {"operationId": operationId, "summary": summary, "description": description}
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = body
    operation["responses"] = dict(sorted(answers.items()))
    if probe and not changes:
        operation["security"] = []
    elif changes:
        operation["security"] = [{"bearer": []}, {}]
    return operation


def openapiDocument() -> dict[str, Any]:
    """
    The control API's description, as a JSON-ready mapping.
    """
    builder = SchemaBuilder(refPrefix="#/components/schemas/")
    faults = builder.faults()
    name = {
        "name": "name",
        "in": "path",
        "required": True,
        "description": "The service's name, as in the config.",
        "schema": {"type": "string"},
    }
    table = {
        "name": "table",
        "in": "path",
        "required": True,
        "description": "A table of the service's plugin (the DNS proxy's records and scripts); "
        "GET /services/NAME/TABLE answers 404 naming the tables a service has.",
        "schema": {"type": "string"},
    }
    service = _ref("schemas", "Service")
    notFound = _ref("responses", "NotFound")
    notAllowed = _ref("responses", "MethodNotAllowed")
    problems = _ref("responses", "Problems")
    tableAnswer = {"type": "object", "description": "What the table holds now.", "additionalProperties": True}
    eventsAnswer = _ref("schemas", "Events")
    faultsAnswer = _ref("schemas", "Faults")
    changing = ", ".join(sorted(m.decode() for m in CHANGING_METHODS))
    paths: dict[str, Any] = {
        "/": {
            "get": _operation(
                "The endpoints",
                "netd's version and each endpoint with what it answers.",
                {
                    "200": _ok(
                        "The endpoints.",
                        {
                            "type": "object",
                            "required": ["netd", "endpoints"],
                            "properties": {
                                "netd": {"type": "string", "description": "netd's version."},
                                "endpoints": {"type": "object", "additionalProperties": {"type": "string"}},
                            },
                        },
                    )
                },
                operationId="index",
            )
        },
        "/health": {
            "get": _operation(
                "Liveness",
                "200 while netd runs; needs no token.",
                {"200": _ok("netd runs.", _status(["ok"]))},
                probe=True,
                operationId="health",
            )
        },
        "/ready": {
            "get": _operation(
                "Readiness",
                "200 once every service listens; 503 while starting and from the moment a stop begins "
                "(so that load balancers stop sending first); needs no token.",
                {
                    "200": _ok("Every service listens.", _status(["ready"])),
                    "503": {
                        "description": "Starting or stopping (or too many connections to the API: then an error).",
                        "content": _content(
                            {
                                "anyOf": [
                                    {
                                        "type": "object",
                                        "required": ["status", "not_listening"],
                                        "properties": {
                                            "status": {"type": "string", "enum": ["starting", "stopping"]},
                                            "not_listening": {"type": "array", "items": {"type": "string"}},
                                        },
                                    },
                                    _ref("schemas", "Error"),
                                ]
                            }
                        ),
                    },
                },
                probe=True,
                operationId="ready",
            )
        },
        "/openapi.json": {
            "get": _operation(
                "This description",
                "The control API's OpenAPI 3.1 description; needs no token.",
                {"200": _ok("The description.", {"type": "object", "required": ["openapi", "paths"]})},
                probe=True,
                operationId="openapi",
            )
        },
        "/services": {
            "get": _operation(
                "Every service",
                "Each service, in config order: plugin, bound addresses, open connections, counters, histograms "
                "and its plugin's own status.",
                {
                    "200": _ok(
                        "The services.",
                        {
                            "type": "object",
                            "required": ["ready", "services"],
                            "properties": {
                                "ready": {"type": "boolean"},
                                "services": {"type": "object", "additionalProperties": service},
                            },
                        },
                    )
                },
                operationId="services",
            ),
            "post": _operation(
                "Create a service",
                "Create and start the service a [[services]] table describes, as a reload adds one: decoded by the "
                "config's own rules (netd schema), all its addresses listened on or none. It shows in GET /services "
                "and the ports file, and a reload keeps it unless the file defines its name. 201 answers its entry "
                "of GET /services.",
                {
                    "201": {
                        "description": "Created and listening.",
                        "headers": {
                            "Location": {
                                "description": "/services/NAME of the new service.",
                                "schema": {"type": "string"},
                            }
                        },
                        "content": _content(service),
                    },
                    "409": _error(
                        "A service of that name runs, a reload or another change of the services is in progress, "
                        "or an address cannot be listened on (problems names it); nothing was changed."
                    ),
                    "422": _error("The table has problems (each in problems, by its key path); nothing was changed."),
                },
                changes=True,
                body={
                    "required": True,
                    "content": _content(
                        {
                            "type": "object",
                            "description": "One [[services]] table of the config, as JSON.",
                            "required": ["name", "plugin", "listen"],
                            "properties": {
                                "name": {"type": "string"},
                                "plugin": {"type": "string"},
                                "listen": {"type": "array", "items": {"type": "string"}},
                            },
                            "additionalProperties": True,
                        }
                    ),
                    "description": f"The service table, at most {MAX_TABLE_BODY} bytes.",
                },
                operationId="createService",
            ),
        },
        "/metrics": {
            "get": _operation(
                "Prometheus metrics",
                f"Every service's metrics in the Prometheus text exposition format 0.0.4 ({PROMETHEUS_CONTENT_TYPE}).",
                {"200": {"description": "The exposition.", "content": {"text/plain": {"schema": {"type": "string"}}}}},
                operationId="metrics",
            )
        },
        "/reload": {
            "post": _operation(
                "Reload the config",
                "Re-read the config file and apply it as SIGHUP does: unchanged services are not touched. "
                "The body is empty or {}.",
                {
                    "200": _ok(
                        "Reloaded.",
                        {
                            "type": "object",
                            "required": ["status"],
                            "properties": {"status": {"type": "string", "const": "reloaded"}},
                        },
                    ),
                    "409": _error("A reload is already in progress."),
                    "422": _error("The config file has problems (each in problems); nothing was changed."),
                    "500": _error("A new listener could not open (the reload was undone), or netd failed."),
                    "501": _error("This netd cannot reload."),
                },
                changes=True,
                body={
                    "required": False,
                    "content": _content({"type": "object", "maxProperties": 0}),
                    "description": f"Nothing, or the JSON object {{}} (at most {MAX_BODY} bytes).",
                },
                operationId="reload",
            )
        },
        "/services/{name}": {
            "get": _operation(
                "One service",
                "One service's entry of GET /services.",
                {"200": _ok("The service.", service), "404": notFound, "405": notAllowed},
                parameters=[name],
                operationId="service",
            ),
            "delete": _operation(
                "Delete a service",
                "Stop the service, as a reload removes one: the answer comes once its listeners are closed, and "
                "its open connections drain (up to [daemon] shutdown_timeout). The body is empty or {}.",
                {
                    "200": _ok(
                        "Removed.",
                        {
                            "type": "object",
                            "required": ["status", "service", "addresses"],
                            "properties": {
                                "status": {"type": "string", "const": "removed"},
                                "service": {"type": "string"},
                                "addresses": {"type": "array", "items": {"type": "object"}},
                            },
                        },
                    ),
                    "404": notFound,
                    "409": _error("A reload or another change of the services is in progress; nothing was changed."),
                },
                changes=True,
                parameters=[name],
                body={
                    "required": False,
                    "content": _content({"type": "object", "maxProperties": 0}),
                    "description": f"Nothing, or the JSON object {{}} (at most {MAX_BODY} bytes).",
                },
                operationId="deleteService",
            ),
        },
        "/services/{name}/events": {
            "get": _operation(
                "Recent events",
                "The service's recent events (connections closed, DNS queries, faults applied), oldest first.",
                {"200": _ok("The events.", eventsAnswer), "400": problems, "404": notFound},
                parameters=[
                    name,
                    {
                        "name": "kind",
                        "in": "query",
                        "description": "Only events of this kind.",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "since",
                        "in": "query",
                        "description": "Only events whose seq is greater.",
                        "schema": {"type": "integer", "minimum": 0},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "description": "Only the most recent this many.",
                        "schema": {"type": "integer", "minimum": 0},
                    },
                ],
                operationId="getEvents",
            ),
            "delete": _operation(
                "Clear the events",
                "Forget every event kept; sequence numbers go on.",
                {"200": _ok("The events (none).", eventsAnswer), "404": notFound},
                changes=True,
                parameters=[name],
                operationId="clearEvents",
            ),
        },
        "/services/{name}/faults": {
            "get": _operation(
                "Faults in force",
                "The service's faults and how many events each has applied to.",
                {"200": _ok("The faults.", faultsAnswer), "404": notFound},
                parameters=[name],
                operationId="getFaults",
            ),
            "put": _operation(
                "Replace the faults",
                "Put these faults in force, each with a fresh schedule (as the config's faults key); 400 lists "
                "each problem with its key path, and nothing changes.",
                {"200": _ok("The faults now.", faultsAnswer), "400": problems, "404": notFound},
                changes=True,
                parameters=[name],
                body={
                    "required": True,
                    "content": _content(
                        {
                            "type": "object",
                            "required": ["faults"],
                            "properties": {"faults": faults},
                            "additionalProperties": False,
                        }
                    ),
                    "description": f"The faults, at most {MAX_TABLE_BODY} bytes.",
                },
                operationId="putFaults",
            ),
            "delete": _operation(
                "Remove the faults",
                "No fault any more (until a reload of a changed service).",
                {"200": _ok("The faults (none).", faultsAnswer), "404": notFound},
                changes=True,
                parameters=[name],
                operationId="clearFaults",
            ),
        },
        "/services/{name}/{table}": {
            "get": _operation(
                "A plugin's table",
                "The table's content; query arguments filter it where the table takes some.",
                {"200": _ok("The table.", tableAnswer), "400": problems, "404": notFound, "405": notAllowed},
                parameters=[name, table],
                operationId="getTable",
            ),
            "put": _operation(
                "Change a plugin's table",
                "Change the table with a JSON body (see the plugin's docs); 400 lists each problem with its key "
                "path, and nothing changes.",
                {"200": _ok("The table now.", tableAnswer), "400": problems, "404": notFound, "405": notAllowed},
                changes=True,
                parameters=[name, table],
                body={
                    "required": True,
                    "content": _content({}),
                    "description": f"The change, as the table takes it, at most {MAX_TABLE_BODY} bytes.",
                },
                operationId="putTable",
            ),
            "delete": _operation(
                "Remove from a plugin's table",
                "Remove what the query arguments name, or put the table back as the config has it.",
                {"200": _ok("The table now.", tableAnswer), "400": problems, "404": notFound, "405": notAllowed},
                changes=True,
                parameters=[name, table],
                operationId="deleteTable",
            ),
        },
    }
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "description": "Every error answer: a short error, a message saying why and what to do, and, "
            "where a body, query or config was invalid, each problem with its key path.",
            "required": ["error", "message"],
            "properties": {
                "error": {"type": "string"},
                "message": {"type": "string"},
                "problems": {"type": "array", "items": {"type": "string"}},
            },
        },
        "Service": {
            "type": "object",
            "required": ["plugin", "listening", "addresses", "connections_open", "counters"],
            "properties": {
                "plugin": {"type": "string"},
                "listening": {"type": "boolean"},
                "addresses": {
                    "type": "array",
                    "description": "Each bound address: the listen string and where it really listens.",
                    "items": {
                        "type": "object",
                        "required": ["listen", "transport"],
                        "properties": {
                            "listen": {"type": "string"},
                            "transport": {"type": "string"},
                            "host": {"type": "string"},
                            "port": {"type": "integer"},
                            "path": {"type": "string"},
                        },
                    },
                },
                "connections_open": {"type": ["integer", "null"], "description": "null for a datagram-only service."},
                "counters": {"type": "object", "additionalProperties": {"type": "integer"}},
                "histograms": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["count", "sum", "buckets"],
                        "properties": {
                            "count": {"type": "integer"},
                            "sum": {"type": "number"},
                            "buckets": {"type": "object", "additionalProperties": {"type": "integer"}},
                        },
                    },
                },
                "status": {"type": "object", "description": "The plugin's own report, where it gives one."},
            },
        },
        "Events": {
            "type": "object",
            "required": ["events", "dropped", "size"],
            "properties": {
                "events": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["seq", "time", "kind"],
                        "properties": {
                            "seq": {"type": "integer"},
                            "time": {"type": "number"},
                            "kind": {"type": "string"},
                        },
                    },
                },
                "dropped": {"type": "integer", "description": "Events the ring dropped, oldest first."},
                "size": {"type": "integer", "description": "Events the service keeps (its events key)."},
            },
        },
        "Faults": {
            "type": "object",
            "required": ["faults", "applied"],
            "properties": {
                "faults": faults,
                "applied": {
                    "type": "array",
                    "description": "How many events each fault has applied to.",
                    "items": {"type": "integer"},
                },
            },
        },
        **builder.defs,
    }
    bearer = 'Bearer realm="netd"'
    responses = {
        "BadRequest": _error("The body is empty, too long, not JSON, or not what the endpoint takes."),
        "Problems": _error("The body or the query arguments are invalid; problems lists each with its key path."),
        "Unauthorized": _error(
            "The request needs 'Authorization: Bearer TOKEN', and it is missing, not a bearer token, or not the token.",
            {
                "WWW-Authenticate": {
                    "description": f'{bearer}, with error="invalid_token" for a wrong one.',
                    "schema": {"type": "string"},
                }
            },
        ),
        "Forbidden": _error(
            "A request that changes something came from a web page of another origin (its Origin header)."
        ),
        "NotFound": _error("No such service, or no such table of it."),
        "MethodNotAllowed": _error(
            "The endpoint (or this table) does not take the method.",
            {"Allow": {"description": "The methods it takes.", "schema": {"type": "string"}}},
        ),
        "LengthRequired": _error("The body was sent chunked; send it with Content-Length."),
        "ContentTooLarge": _error(f"The body is larger than {MAX_TABLE_BODY} bytes."),
        "UnsupportedMediaType": _error(f"A body must be sent as Content-Type: {_JSON}."),
        "MisdirectedRequest": _error(
            "The Host header does not name the control API: it answers to localhost, loopback addresses, "
            "the address it listens on and the names of [daemon] admin_hosts (against DNS rebinding)."
        ),
        "InternalError": _error("netd failed to answer; its log has the details (no traceback is sent)."),
        "Busy": _error("admin_max_connections connections to the API are open and being answered; try again."),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "netd control API",
            "version": API_VERSION,
            "description": "netd's HTTP control API on [daemon] admin. Every answer is JSON (GET /metrics: "
            'Prometheus text), errors included: {"error", "message"}. Every request\'s Host must name the API '
            "(else 421). A request that changes something (" + changing + ", or any with a body) is refused "
            "from a web page of another origin (403) and needs the bearer token whenever the API has one: the "
            "one netd makes in STATE_DIR/admin.token for a TCP API (the ports file's admin.token_file says "
            "where), or that of [daemon] admin_token_file, which every endpoint but /health, /ready and "
            f"/openapi.json then needs. A body is JSON (415), sent with Content-Length (411), of at most "
            f"{MAX_TABLE_BODY} bytes (413); each is checked before the body is read.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": responses,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The token of [daemon] admin_token_file, or the one netd made in "
                    "STATE_DIR/admin.token (named by the ports file's admin.token_file).",
                }
            },
        },
        "security": [{"bearer": []}, {}],
    }


def _status(values: list[str]) -> dict[str, Any]:
    """
    A C{{"status": VALUE}} body.
    """
    return {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": values}},
    }


@cache
def renderOpenAPI() -> str:
    """
    The description's text, as served and as C{docs/openapi.json} keeps it.
    """
    return json.dumps(openapiDocument(), indent=2, ensure_ascii=False) + "\n"
