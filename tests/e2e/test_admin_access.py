"""The HTTP endpoint answers only requests that name it by IP address,
localhost or a configured name (a web page cannot reach it through the
browser by pointing its own name at 127.0.0.1), and the admin API can ask
for a bearer token."""
import http.client

import pytest

TOKEN = "s3cret-token-0123456789"


def get(w, path, host=None, token=None):
    conn = http.client.HTTPConnection("127.0.0.1", w.http_port, timeout=5)
    headers = {}
    if host is not None:
        headers["Host"] = host
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        # skip_host: the Host header is exactly the one given (or none).
        conn.putrequest("GET", path, skip_host=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        answer = conn.getresponse()
        return answer.status, answer.read().decode()
    finally:
        conn.close()


def test_requests_naming_another_host_are_refused(warren_factory):
    w = warren_factory("--http-hosts", "warren.internal")
    port = w.http_port
    for path in ("/api/clients", "/api/overview", "/metrics", "/"):
        status, body = get(w, path, host=f"attacker.example:{port}")
        assert status == 421 and "--http-hosts" in body, (path, status, body)
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"warren.internal:{port}"):
            assert get(w, path, host=host)[0] == 200, (path, host)
    # Probes answer whatever the name: load balancers send their own.
    assert get(w, "/healthz", host="attacker.example")[0] == 200
    # A request without Host (HTTP/1.0 tools) came from no browser.
    assert get(w, "/metrics")[0] == 200


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


def test_the_admin_api_asks_for_its_token(warren_factory, token_file):
    w = warren_factory("--http-token-file", str(token_file))
    host = f"127.0.0.1:{w.http_port}"
    for path in ("/api/overview", "/api/clients", "/api/pools", "/api/upstreams"):
        assert get(w, path, host=host)[0] == 401, path
        assert get(w, path, host=host, token="wrong-token-0123456789")[0] == 401, path
        assert get(w, path, host=host, token=TOKEN[:-1])[0] == 401, path
        assert get(w, path, host=host, token=TOKEN)[0] == 200, path
    # Metrics, probes and the page itself stay open; the page sends the token.
    assert get(w, "/metrics", host=host)[0] == 200
    assert get(w, "/readyz", host=host)[0] == 200
    assert get(w, "/", host=host)[0] == 200
    assert TOKEN not in w.log_text()


def test_a_short_token_is_refused_at_start(warren_factory):
    with pytest.raises(AssertionError, match="at least 16 visible ASCII characters"):
        warren_factory("--http-token", "short")
