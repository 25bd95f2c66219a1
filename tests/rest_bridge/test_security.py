"""Hardening of the bridge: CORS closed unless configured, security headers on every answer, a Content-Security-
Policy on the docs pages that their own page and assets satisfy, and the body limit over a real HTTP connection."""

import base64
import hashlib
import re
import socket
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client import CollectorRegistry

from rest_bridge.app import create_app
from rest_bridge.settings import BridgeSettings

from ..processes import started
from .conftest import IRIS, bridge

pytestmark = pytest.mark.anyio

ALLOWED = "https://app.example.com"
OTHER = "https://evil.example.net"
API_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
}
HTTP_PORT = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
SMALL_LIMIT = 1024


def _preflight(origin: str, method: str = "POST") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type, x-request-id",
    }


def _cors_headers(response: httpx.Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.startswith("access-control-")}


async def test_cors_is_closed_by_default(client: httpx.AsyncClient):
    preflight = await client.options("/predict/iris", headers=_preflight(ALLOWED))
    assert preflight.status_code == 405
    assert _cors_headers(preflight) == {}
    answer = await client.post("/predict/iris", json=IRIS, headers={"Origin": ALLOWED})
    assert answer.status_code == 200
    assert _cors_headers(answer) == {}


async def test_cors_lets_configured_origins_only(prediction_server):
    async with bridge(
        f"127.0.0.1:{prediction_server.port}", cors_allow_origins=(ALLOWED,), max_body_bytes=SMALL_LIMIT
    ) as client:
        preflight = await client.options("/models/iris/rollback", headers=_preflight(ALLOWED))
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == ALLOWED
        assert set(preflight.headers["access-control-allow-methods"].split(", ")) == {"GET", "POST", "PUT"}
        allowed_headers = preflight.headers["access-control-allow-headers"].lower()
        assert {"authorization", "content-type", "x-request-id", "x-routing-key"} <= set(allowed_headers.split(", "))
        assert "access-control-allow-credentials" not in preflight.headers

        refused = await client.options("/predict/iris", headers=_preflight(OTHER))
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers
        refused_method = await client.options("/predict/iris", headers=_preflight(ALLOWED, method="DELETE"))
        assert refused_method.status_code == 400

        answer = await client.post("/predict/iris", json=IRIS, headers={"Origin": ALLOWED})
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == ALLOWED
        assert answer.headers["access-control-expose-headers"].lower() == "x-request-id"
        other = await client.post("/predict/iris", json=IRIS, headers={"Origin": OTHER})
        assert other.status_code == 200
        assert "access-control-allow-origin" not in other.headers
        # A page of an allowed origin can read the body limit's refusal too, not only a network error.
        too_large = await client.post(
            "/predict/iris", content=b"x" * (SMALL_LIMIT + 1), headers={"Origin": ALLOWED, "content-type": "text/plain"}
        )
        assert too_large.status_code == 413
        assert too_large.headers["access-control-allow-origin"] == ALLOWED


@pytest.mark.parametrize(
    "value", ["https://app.example.com/", "app.example.com", "https://app.example.com/path", "*,https://a.example"]
)
def test_an_origin_a_browser_never_sends_is_refused(value: str):
    # A trailing slash or a path would never match the Origin header: CORS would look on and stay shut.
    with pytest.raises(ValueError, match="cors_allow_origins"):
        BridgeSettings(cors_allow_origins=value)


def test_origins_are_read_comma_separated_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BRIDGE_CORS_ALLOW_ORIGINS", f"{ALLOWED}, http://localhost:3000")
    assert BridgeSettings().cors_allow_origins == (ALLOWED, "http://localhost:3000")
    monkeypatch.delenv("BRIDGE_CORS_ALLOW_ORIGINS")
    assert BridgeSettings().cors_allow_origins == ()


async def test_every_answer_carries_the_security_headers(prediction_server):
    async with bridge(f"127.0.0.1:{prediction_server.port}", max_body_bytes=SMALL_LIMIT) as client:
        answers = [
            await client.post("/predict/iris", json=IRIS),
            await client.post("/predict/iris", json={**IRIS, "sepal_length_cm": -1}),
            await client.post("/predict/iris", content=b"x" * (SMALL_LIMIT + 1)),
            await client.get("/nowhere"),
            await client.get("/predict/iris"),
            await client.get("/models/iris/versions"),  # 403: this server has no admin token
            await client.get("/metrics"),
            await client.get("/health"),
            await client.get("/openapi.json"),
            await client.get("/static/docs/swagger-ui.css"),
        ]
    assert [answer.status_code for answer in answers] == [200, 422, 413, 404, 405, 403, 200, 200, 200, 200]
    for answer in answers:
        assert {name: answer.headers.get(name) for name in API_HEADERS} == API_HEADERS, answer.request.url


class _Page(HTMLParser):
    """What a browser would load or run for a page: external scripts, stylesheets, icons, inline scripts and
    styles, and any inline event handler attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.icons: list[str] = []
        self.inline_scripts: list[str] = []
        self.inline_styles: list[str] = []
        self.handlers: list[str] = []
        self._inline: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.handlers += [name for name in attributes if name.startswith("on")]
        self._inline = None
        if tag == "script":
            if attributes.get("src"):
                self.scripts.append(str(attributes["src"]))
            else:
                self._inline = self.inline_scripts
                self.inline_scripts.append("")
        elif tag == "style":
            self._inline = self.inline_styles
            self.inline_styles.append("")
        elif tag == "link" and attributes.get("href"):
            rel = attributes.get("rel") or ""
            (self.styles if "stylesheet" in rel else self.icons).append(str(attributes["href"]))
        if "style" in attributes:
            self.inline_styles.append(str(attributes["style"]))

    def handle_data(self, data: str) -> None:
        if self._inline is not None:
            self._inline[-1] += data

    def handle_endtag(self, tag: str) -> None:
        self._inline = None


def _policy(header: str) -> dict[str, list[str]]:
    directives = [part.split() for part in header.split(";") if part.strip()]
    return {name: sources for name, *sources in directives}


def _sha256(text: str) -> str:
    return f"'sha256-{base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()}'"


def _allows(sources: list[str], inline: str) -> bool:
    """Whether a CSP source list lets an inline script or style run, as CSP Level 3 decides: by its hash, or by
    'unsafe-inline' when the list has no hash or nonce (with one, browsers ignore 'unsafe-inline')."""
    if _sha256(inline) in sources:
        return True
    has_hash_or_nonce = any(source.startswith(("'sha256-", "'sha384-", "'sha512-", "'nonce-")) for source in sources)
    return "'unsafe-inline'" in sources and not has_hash_or_nonce


ASSET_TYPES = {".js": ("application/javascript", "text/javascript"), ".css": ("text/css",), ".png": ("image/png",)}


@pytest.mark.parametrize("root_path", ["", "/bridge"], ids=["root", "behind-a-prefix"])
@pytest.mark.parametrize("page_path", ["/docs", "/redoc"])
async def test_the_docs_pages_satisfy_their_own_content_security_policy(prediction_server, page_path, root_path):
    app = create_app(BridgeSettings(grpc_target=f"127.0.0.1:{prediction_server.port}"), CollectorRegistry())
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://bridge") as client,
    ):
        page = await client.get(f"{root_path}{page_path}")
        assert page.status_code == 200
        assert {name: page.headers[name] for name in ("x-content-type-options", "x-frame-options")} == {
            "x-content-type-options": "nosniff",
            "x-frame-options": "DENY",
        }
        assert page.headers["referrer-policy"] == "no-referrer"
        policy = _policy(page.headers["content-security-policy"])
        assert policy["default-src"] == ["'none'"]
        assert policy["frame-ancestors"] == ["'none'"]
        assert policy["base-uri"] == ["'none'"]
        script_src = policy["script-src"]
        assert "'self'" in script_src
        assert not {"'unsafe-inline'", "'unsafe-eval'", "*", "data:", "blob:"} & set(script_src)
        # Nothing but the bridge itself is ever allowed to be loaded or connected to.
        for name, sources in policy.items():
            assert not [s for s in sources if s.startswith(("http:", "https:")) or s == "*"], (name, sources)

        parsed = _Page()
        parsed.feed(page.text)
        assert parsed.scripts, "the page loads its bundle"
        assert parsed.handlers == []
        for inline in parsed.inline_scripts:
            assert _allows(script_src, inline), f"an inline script the policy blocks: {inline[:80]!r}"
        for inline in parsed.inline_styles:
            assert _allows(policy.get("style-src", policy["default-src"]), inline), inline[:80]
        for url, directive in [
            *((url, "script-src") for url in parsed.scripts),
            *((url, "style-src") for url in parsed.styles),
            *((url, "img-src") for url in parsed.icons),
        ]:
            # Same origin, so 'self' covers it, and under the prefix the page was served from.
            parts = urlsplit(url)
            assert not parts.scheme and not parts.netloc and url.startswith(f"{root_path}/static/docs/"), url
            assert "'self'" in policy[directive], (directive, url)
            asset = await client.get(url)
            assert asset.status_code == 200, url
            # nosniff makes browsers refuse a script or stylesheet that is not served as one.
            suffix = url[url.rfind(".") :]
            assert asset.headers["content-type"].startswith(ASSET_TYPES[suffix]), (url, asset.headers["content-type"])
            assert asset.headers["x-content-type-options"] == "nosniff"
        # The schema the page fetches is the bridge's own (connect-src 'self').
        schema_url = re.search(r"""(?:url: '|spec-url=")([^'"]+)""", page.text)
        assert schema_url is not None
        assert schema_url.group(1) == f"{root_path}/openapi.json"
        assert "'self'" in policy["connect-src"]


# The body limit over a real HTTP/1.1 connection to the bridge process: the 413 comes while the client is still
# sending, so the bridge neither waits for nor reads a body it refuses.
@pytest.fixture(scope="module")
def bridge_process() -> Iterator[int]:
    # The limit is checked before any gRPC call, so the bridge needs no server behind it here.
    env = {
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_PORT": "0",
        "BRIDGE_GRPC_TARGET": "127.0.0.1:9",
        "BRIDGE_MAX_BODY_BYTES": str(SMALL_LIMIT),
    }
    with started("rest_bridge", env) as process:
        yield int(process.wait_for(HTTP_PORT).group(1))
        assert process.terminate() == 0


def _status_before_the_body_ends(port: int, head: bytes, partial_body: bytes) -> tuple[int, float]:
    """Send a request's head and the start of its body, never the rest; the status the bridge answers and after
    how many seconds (a bridge that waited for the whole body would not answer before the 5 s timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        started_at = time.monotonic()
        connection.sendall(head + partial_body)
        answer = b""
        while b"\r\n" not in answer:
            chunk = connection.recv(4096)
            assert chunk, f"the bridge closed the connection without an answer: {answer!r}"
            answer += chunk
    return int(answer.split(b" ", 2)[1]), time.monotonic() - started_at


def _head(extra: bytes) -> bytes:
    return b"POST /predict/iris HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n" + extra + b"\r\n"


def test_a_declared_length_over_the_limit_is_refused_before_any_body_arrives(bridge_process: int):
    head = _head(f"Content-Length: {100 * SMALL_LIMIT}\r\n".encode())
    status, seconds = _status_before_the_body_ends(bridge_process, head, b"")
    assert status == 413
    assert seconds < 2


def test_a_chunked_body_is_refused_once_it_passes_the_limit(bridge_process: int):
    chunk = b'{"sepal_length_cm": 5.1, ' + b" " * 200
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(2 * SMALL_LIMIT // len(chunk)))
    status, seconds = _status_before_the_body_ends(bridge_process, _head(b"Transfer-Encoding: chunked\r\n"), body)
    assert status == 413
    assert seconds < 2


def test_a_chunked_body_within_the_limit_is_read_to_its_end(bridge_process: int):
    # The counterpart: under the limit, the bridge waits for the last chunk (and then answers 503, no server).
    with socket.create_connection(("127.0.0.1", bridge_process), timeout=5) as connection:
        connection.sendall(_head(b"Transfer-Encoding: chunked\r\n") + b'5\r\n{"sep\r\n')
        connection.settimeout(0.5)
        with pytest.raises(TimeoutError):
            connection.recv(4096)
        rest = b'al_length_cm": 5.1, "sepal_width_cm": 3.5, "petal_length_cm": 1.4, "petal_width_cm": 0.2}'
        connection.settimeout(10)
        connection.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest))
        answer = connection.recv(4096)
    assert answer.split(b" ", 2)[1] == b"503", answer
