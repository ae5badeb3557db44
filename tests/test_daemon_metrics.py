"""The Prometheus endpoint: real HTTP on localhost, text format a Prometheus parser accepts."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

import pytest

from sensor.daemon.metrics import CONTENT_TYPE, Family, MetricsServer, parse_text, render

# https://prometheus.io/docs/instrumenting/exposition_formats/ : sample line grammar
_SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? '
                     r'(-?[0-9.e+]+|NaN|[+-]Inf)$')


def test_render_escapes_labels_and_types():
    text = render([
        Family("a_total", "counter", "A.", (((("k", 'x"y\\z\n'),), 3.0),)),
        Family("b", "gauge", "B.", (((), 0.25),)),
        Family("c", "gauge", "no samples"),
    ]).decode()
    lines = text.splitlines()
    assert "# TYPE a_total counter" in lines and "# TYPE b gauge" in lines
    assert 'a_total{k="x\\"y\\\\z\\n"} 3' in lines and "b 0.25" in lines
    for line in lines:
        assert line.startswith("#") or _SAMPLE.match(line), line


def test_server_serves_the_last_snapshot():
    srv = MetricsServer("127.0.0.1", 0).start()
    try:
        host, port = srv.address
        assert host == "127.0.0.1"
        srv.publish([Family("radsensor_packets_total", "counter", "P.", (((("interface", "eth1"),), 5),))])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert r.headers["Content-Type"] == CONTENT_TYPE
            assert parse_text(r.read().decode()) == {'radsensor_packets_total{interface="eth1"}': 5.0}
        srv.publish([Family("radsensor_packets_total", "counter", "P.", (((("interface", "eth1"),), 9),))])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert parse_text(r.read().decode())['radsensor_packets_total{interface="eth1"}'] == 9.0
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=5)
    finally:
        srv.stop()


def test_port_in_use_is_one_clear_error():
    a = MetricsServer("127.0.0.1", 0)
    try:
        with pytest.raises(OSError, match=r"metrics: cannot listen on 127.0.0.1:\d+"):
            MetricsServer("127.0.0.1", a.address[1])
    finally:
        a._server.server_close()
