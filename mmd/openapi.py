"""The OpenAPI 3.1 document of the daemon's API (`GET /openapi.json`)."""

from __future__ import annotations

from typing import Any

from mmd import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}
_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "A model id; it may contain one '/' (sent as is or as %2F).",
    "schema": {"type": "string"},
}


def _json(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    content = {"application/json": {"schema": schema or {"type": "object"}}}
    return {"description": description, "content": content}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "bad request (invalid JSON, spec or filter)",
        401: "missing or wrong API token",
        404: "unknown model",
        409: "conflict (declared in the manifest, or not requested through the API)",
        413: "body larger than 64 KiB",
        421: "Host header is not this machine",
    }
    return {str(c): _json(text[c], _ERROR) for c in codes}


def document() -> dict[str, Any]:
    entry = {"$ref": "#/components/schemas/ModelEntry"}
    write: list[dict[str, list[str]]] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "mmd model manager daemon", "version": __version__},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "detail"],
                    "properties": {"error": {"type": "string"}, "detail": {}},
                },
                "ModelEntry": {
                    "type": "object",
                    "description": "A registry entry (SPEC §4).",
                    "properties": {
                        "model_id": {"type": "string"},
                        "source": {"type": "string"},
                        "model_type": {"type": "string"},
                        "path": {"type": "string"},
                        "status": {
                            "enum": ["pending", "downloading", "available", "error", "deleted"]
                        },
                        "version": {"type": ["string", "null"]},
                        "size_bytes": {"type": "integer"},
                        "download_date": {"type": ["string", "null"]},
                        "files": {"type": "array", "items": {"type": "object"}},
                        "error": {"type": ["string", "null"]},
                        "metadata": {"type": "object"},
                    },
                },
                "Progress": {
                    "type": ["object", "null"],
                    "properties": {
                        "bytes_done": {"type": "integer"},
                        "bytes_total": {"type": ["integer", "null"]},
                        "rate_bps": {"type": "integer"},
                        "eta_s": {"type": ["number", "null"]},
                    },
                },
            },
        },
        "paths": {
            "/healthz": {"get": {"summary": "Daemon health", "responses": {"200": _json("ok")}}},
            "/models": {
                "get": {
                    "summary": "Registry entries",
                    "parameters": [
                        {"name": n, "in": "query", "schema": {"type": "string"}}
                        for n in ("status", "type", "source")
                    ],
                    "responses": {
                        "200": _json(
                            "entries",
                            {"type": "object", "properties": {"models": {"items": entry}}},
                        ),
                        **_errors(400),
                    },
                }
            },
            "/models/{id}": {
                "get": {
                    "summary": "One registry entry",
                    "parameters": [_ID],
                    "responses": {"200": _json("the entry", entry), **_errors(404)},
                },
                "delete": {
                    "summary": "Remove a model requested through the API",
                    "parameters": [_ID],
                    "security": write,
                    "responses": {"202": _json("accepted"), **_errors(401, 404, 409)},
                },
            },
            "/models/{id}/files": {
                "get": {
                    "summary": "Files with size and sha256",
                    "parameters": [_ID],
                    "responses": {"200": _json("files"), **_errors(404)},
                }
            },
            "/models/{id}/status": {
                "get": {
                    "summary": "Status, error and live progress",
                    "parameters": [_ID],
                    "responses": {"200": _json("status"), **_errors(404)},
                }
            },
            "/models/download": {
                "post": {
                    "summary": "Request a model: {model_id, <manifest keys>}",
                    "security": write,
                    "requestBody": {
                        "content": {"application/json": {"schema": {"type": "object"}}}
                    },
                    "responses": {
                        "202": _json("accepted; Location names the status route"),
                        **_errors(400, 401, 413),
                    },
                }
            },
            "/sync": {
                "post": {
                    "summary": "Run a reconcile pass now ({ids: [...]} optional)",
                    "security": write,
                    "responses": {"202": _json("accepted: {pass: N}"), **_errors(400, 401)},
                }
            },
            "/events": {
                "get": {
                    "summary": "Server-Sent Events: status changes, progress at most 1/s",
                    "responses": {"200": {"description": "text/event-stream"}},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus text format",
                    "responses": {"200": {"description": "text/plain; version=0.0.4"}},
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": _json("OpenAPI")}}
            },
        },
    }
