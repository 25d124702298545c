"""Checks an HTTP response of cangrejo against openapi/openapi.yaml.

`SpecChecker.check(method, url, status, headers, body)` finds the operation the request went
to (the path template that matches, as the server's router does: a `{param}` is one non-empty
segment, literal segments must be equal), picks the response object for the status (exact
code, then `4XX`-style range, then `default`) and returns the ways the response differs from
it:

- a status the operation does not list;
- a body whose media type is not one of that response's `content` types (or a body where the
  spec has no content, e.g. 204 and 304), or a charset other than utf-8;
- a JSON body that does not parse (strictly: no NaN, no duplicate keys) or does not validate
  against the schema (JSON Schema Draft 2020-12, `$ref`s resolved in the spec document, and the
  formats date-time (RFC 3339 with an offset), date, uri, int32 and int64 checked);
- a header marked `required: true` that is missing, or a documented header whose value does
  not validate against its schema;
- for problem+json bodies, a `status` member other than the HTTP status or an `instance` other
  than the response's X-Request-Id (both promised by the spec's Problem schema).

A request that reaches no operation is checked against the spec's `x-framework-responses`
(the request framework's answers, described in `info.description`): `unknown-path` when no
template matches, `method-not-allowed` when one does but not with this method (then `Allow`
must name exactly the path's methods, HEAD included with GET), `cors-preflight` for an OPTIONS
request with `Origin` and `Access-Control-Request-Method`. HEAD is checked as GET, without a
body.

Known deviations of the server that are waiting for a fix are in ALLOWED, each with its reason;
a violation one of them matches is reported as allowed instead (never silently).
"""

import datetime
import json
import os
import re
import threading
import urllib.parse
from dataclasses import dataclass, field

import jsonschema
import yaml

SPEC_PATH = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "openapi",
                                         "openapi.yaml"))

METHODS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")



@dataclass(frozen=True)
class Allowance:
    """A known server deviation tolerated until it is fixed: a violation of `method template`
    answered with `status` whose text contains `contains` is reported as allowed."""
    method: str
    template: str
    status: int
    contains: str
    reason: str

    def matches(self, method, template, status, violation):
        return (self.method == method and self.template == template and self.status == status
                and self.contains in violation)


# Known deviations of the server, pending a fix in the server (never in the spec's favour).
ALLOWED = ()


@dataclass
class Result:
    method: str
    url: str
    status: int
    template: str  # the path template, "(no route)" when none matched
    violations: list = field(default_factory=list)
    allowed: list = field(default_factory=list)  # [(violation, reason)]

    def describe(self):
        lines = [f"{self.method} {self.url} -> {self.status} (spec: {self.template})"]
        lines += [f"  - {v}" for v in self.violations]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# formats


_DATE_TIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?"
                        r"([Zz]|[+-]\d{2}:\d{2})$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _is_date_time(value):
    if not isinstance(value, str):
        return True
    m = _DATE_TIME.match(value)
    if not m:
        return False
    hour, minute, second = int(m.group(4)), int(m.group(5)), int(m.group(6))
    if hour > 23 or minute > 59 or second > 60:
        return False
    offset = m.group(8)
    if offset not in ("Z", "z") and (int(offset[1:3]) > 23 or int(offset[4:6]) > 59):
        return False
    try:
        datetime.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return False
    return True


def _is_date(value):
    if not isinstance(value, str):
        return True
    if not _DATE.match(value):
        return False
    try:
        datetime.date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _is_uri(value):
    if not isinstance(value, str):
        return True
    parts = urllib.parse.urlsplit(value)
    return bool(parts.scheme) and bool(parts.netloc or parts.path) and " " not in value


def _int_range(bits):
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True
        return low <= value <= high
    return check


def format_checker():
    checker = jsonschema.FormatChecker(formats=())
    checker.checks("date-time")(_is_date_time)
    checker.checks("date")(_is_date)
    checker.checks("uri")(_is_uri)
    checker.checks("int32")(_int_range(32))
    checker.checks("int64")(_int_range(64))
    return checker


# ---------------------------------------------------------------------------------------------
# JSON


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs):
    result = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(f"duplicate member {key!r}")
        result[key] = value
    return result


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


def parse_json(body):
    """The JSON value of body (bytes), strictly: UTF-8, no NaN/Infinity, no duplicate keys."""
    return json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicates,
                      parse_constant=_no_constants)


def _media_essence(content_type):
    """('type/subtype' lower-cased, {param: value}) of a Content-Type value."""
    parts = content_type.split(";")
    params = {}
    for p in parts[1:]:
        if "=" in p:
            k, v = p.split("=", 1)
            params[k.strip().lower()] = v.strip().strip('"')
    return parts[0].strip().lower(), params


def _is_json_media(essence):
    return essence == "application/json" or essence.endswith("+json")


def _media_matches(pattern, essence):
    pattern = pattern.lower()
    if pattern in ("*/*", essence):
        return True
    return pattern.endswith("/*") and essence.startswith(pattern[:-1])


# ---------------------------------------------------------------------------------------------
# the checker


class SpecChecker:
    def __init__(self, spec=None, allowed=ALLOWED):
        if spec is None:
            with open(SPEC_PATH) as f:
                spec = yaml.safe_load(f)
        self.spec = spec
        self.allowed = tuple(allowed)
        self._resolver = jsonschema.RefResolver(base_uri="", referrer=spec)
        self._formats = format_checker()
        self._validators = {}
        self._lock = threading.Lock()  # RefResolver keeps a scope stack: one validation at once
        self._templates = []
        for template, item in spec.get("paths", {}).items():
            segments = template[1:].split("/")
            literals = sum(1 for s in segments if not s.startswith("{"))
            self._templates.append((template, segments, literals, item))
        # Concrete paths before templated ones (OpenAPI 3.1, Paths Object).
        self._templates.sort(key=lambda t: -t[2])

    # --- spec navigation

    def deref(self, node):
        """Follows `$ref`s (local ones, into the spec document) until a real object."""
        seen = set()
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"]
            if ref in seen or not ref.startswith("#/"):
                raise ValueError(f"cannot follow $ref {ref!r}")
            seen.add(ref)
            node = self.spec
            for part in ref[2:].split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def match(self, path):
        """[(template, path item)] of every path template that matches path, most literal
        segments first."""
        if not path.startswith("/"):
            return []
        segments = path[1:].split("/")  # "/a/" has an empty last segment: no template matches
        found = []
        for template, t_segments, _, item in self._templates:
            if len(t_segments) != len(segments):
                continue
            ok = True
            for want, got in zip(t_segments, segments):
                if not got:
                    ok = False
                elif want.startswith("{") and want.endswith("}"):
                    continue
                elif want != got:
                    ok = False
                if not ok:
                    break
            if ok:
                found.append((template, item))
        return found

    def _validator(self, schema):
        key = id(schema)
        v = self._validators.get(key)
        if v is None:
            v = jsonschema.Draft202012Validator(schema, resolver=self._resolver,
                                                format_checker=self._formats)
            self._validators[key] = (v, schema)  # keep schema alive: its id stays unique
            return v
        return v[0]

    def validate(self, value, schema):
        """Messages of the ways value does not match schema (empty when it matches)."""
        with self._lock:
            errors = sorted(self._validator(schema).iter_errors(value),
                            key=lambda e: list(e.absolute_path))
            return [f"{_json_path(e.absolute_path)}: {e.message}" for e in errors[:20]]

    # --- the check

    def check(self, method, url, status, headers, body, body_known=True, request_headers=None):
        """A Result for one response. headers: the response's (any mapping; names are matched
        case-insensitively); body: the bytes as the client read them (decoded of
        Content-Encoding); body_known False when the body was not read (a streamed response):
        it is not checked. request_headers: the request's, to tell a CORS preflight."""
        method = method.upper()
        headers = {k.lower(): v for k, v in headers.items()}
        request_headers = {k.lower(): v for k, v in (request_headers or {}).items()}
        path = urllib.parse.urlsplit(url).path or "/"
        candidates = self.match(path)
        result = Result(method, url, status, candidates[0][0] if candidates else "(no route)")
        op_method = "get" if method == "HEAD" else method.lower()
        operation, template = None, None
        for t, item in candidates:
            if op_method in item:
                operation, template = item[op_method], t
                break
        framework = self.spec.get("x-framework-responses", {})
        preflight = (method == "OPTIONS" and "origin" in request_headers
                     and "access-control-request-method" in request_headers)
        if preflight:
            case = "cors-preflight"
        elif operation is not None:
            case = None
            result.template = template
        else:
            case = "method-not-allowed" if candidates else "unknown-path"
        responses = operation.get("responses", {}) if case is None else framework.get(case, {})
        where = (f"{method} {result.template}" if case is None else
                 f"{method} {path} (x-framework-responses {case})")
        response = self._pick(responses, status)
        violations = []
        if response is None:
            violations.append(f"status {status} is not documented for {where} "
                              f"(documented: {', '.join(sorted(map(str, responses)))})")
        else:
            response = self.deref(response)
            violations += self._check_headers(response, headers)
            if method != "HEAD" and body_known:
                violations += self._check_body(response, headers, body, status)
            if case is not None and candidates and status == 405:
                violations += self._check_allow(candidates, headers)
        for v in violations:
            reason = next((a.reason for a in self.allowed
                           if a.matches(method, result.template, status, v)), None)
            if reason is None:
                result.violations.append(v)
            else:
                result.allowed.append((v, reason))
        return result

    @staticmethod
    def _pick(responses, status):
        code = str(status)
        if code in responses:
            return responses[code]
        for key in (f"{code[0]}XX", f"{code[0]}xx"):
            if key in responses:
                return responses[key]
        return responses.get("default")

    def _check_headers(self, response, headers):
        problems = []
        for name, header in response.get("headers", {}).items():
            header = self.deref(header)
            if name.lower() == "content-type":
                continue  # OpenAPI: ignored; the media type is checked with the content
            value = headers.get(name.lower())
            if value is None:
                if header.get("required"):
                    problems.append(f"header {name} is missing (required)")
                continue
            schema = header.get("schema")
            if schema is None:
                continue
            target = self.deref(schema)
            if _schema_type(target) in ("integer", "number"):
                try:
                    value = int(value) if _schema_type(target) == "integer" else float(value)
                except ValueError:
                    problems.append(f"header {name}: {value!r} is not a number")
                    continue
            for message in self.validate(value, schema):
                problems.append(f"header {name} {message}")
        return problems

    def _check_body(self, response, headers, body, status):
        content = response.get("content") or {}
        body = body or b""
        content_type = headers.get("content-type")
        if not content:
            if body:
                return [f"a body of {len(body)} bytes ({content_type or 'no Content-Type'}) where "
                        f"the spec documents none"]
            return []
        if content_type is None:
            return [f"no Content-Type; the spec documents {', '.join(content)}"]
        essence, params = _media_essence(content_type)
        media = next((content[k] for k in content if _media_matches(k, essence)), None)
        if media is None:
            return [f"Content-Type {content_type!r} is not documented here "
                    f"(documented: {', '.join(content)})"]
        charset = params.get("charset")
        if charset is not None and charset.lower() != "utf-8":
            return [f"Content-Type {content_type!r}: charset is not utf-8"]
        media = self.deref(media)
        schema = media.get("schema")
        if _is_json_media(essence):
            try:
                value = parse_json(body)
            except (ValueError, UnicodeDecodeError) as e:
                return [f"the body is not valid JSON ({e}): {body[:200]!r}"]
        else:
            try:
                value = body.decode("utf-8")
            except UnicodeDecodeError as e:
                return [f"the {essence} body is not UTF-8 ({e})"]
        if schema is None:
            return []
        problems = [f"body {m}" for m in self.validate(value, schema)]
        if essence == "application/problem+json" and isinstance(value, dict):
            if "status" in value and value["status"] != status:
                problems.append(f"body $.status is {value['status']!r}, the HTTP status {status}")
            request_id = headers.get("x-request-id")
            if "instance" in value and request_id is not None and value["instance"] != request_id:
                problems.append(f"body $.instance is {value['instance']!r}, not the response's "
                                f"X-Request-Id {request_id!r}")
        return problems

    @staticmethod
    def _check_allow(candidates, headers):
        allow = headers.get("allow")
        if allow is None:
            return []  # the header check already reports it missing
        documented = set()
        for _, item in candidates:
            documented |= {m.upper() for m in item if m in METHODS}
        if "GET" in documented:
            documented.add("HEAD")
        got = {m.strip().upper() for m in allow.split(",") if m.strip()}
        if got != documented:
            return [f"Allow is {allow!r}; the spec's methods for this path are "
                    f"{', '.join(sorted(documented))}"]
        return []


def _schema_type(schema):
    t = schema.get("type") if isinstance(schema, dict) else None
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), None)
    return t


def _json_path(parts):
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


_default = None
_default_lock = threading.Lock()


def default_checker():
    """The checker of openapi/openapi.yaml, loaded once."""
    global _default
    with _default_lock:
        if _default is None:
            _default = SpecChecker()
        return _default
