"""The dashboard server of a real run: state, server-sent events, /metrics, SQL, tokens."""

from __future__ import annotations

import urllib.request

import pytest
from dash_helpers import counting_flow, free_port, http, http_json
from dash_helpers import metric_samples as _metrics
from dash_helpers import wait_until as _wait

from tideflow._errors import ConfigError
from tideflow.dashboard import Dashboard, DashboardSettings, Panel


def test_live_run_state_metrics_and_sql(running) -> None:  # type: ignore[no-untyped-def]
    panels = (
        Panel("per key", "SELECT key, n FROM per_key ORDER BY key", kind="bar", x="key", y=("n",)),
    )
    with Dashboard(DashboardSettings(port=0, panels=panels)) as dash:
        running(counting_flow("srv", events=12_000, rate=4000), [dash])
        _wait(lambda: http_json(dash.url + "api/state")[1]["totals"]["records_in"] > 0)
        _, first = http_json(dash.url + "api/state")
        assert first["status"] == "running" and first["flow"] == "srv"
        ids = {s["id"] for s in first["steps"]}
        assert {"srv.numbers", "srv.check", "srv.per_key"} <= ids
        # Numbers move while the job runs.
        _wait(
            lambda: (
                http_json(dash.url + "api/state")[1]["totals"]["records_in"]
                > first["totals"]["records_in"]
            )
        )
        # Prometheus text, parsed by prometheus-client's own parser.
        m = _metrics(dash.url)
        key = (
            "tideflow_records_out_total",
            (("flow", "srv"), ("kind", "source"), ("step", "srv.numbers")),
        )
        assert m[key] > 0
        assert all(name.startswith("tideflow_") for name, _ in m)
        # SQL over the live tables.
        _wait(lambda: "per_key" in http_json(dash.url + "api/tables")[1])
        status, ans = http_json(dash.url + "api/sql", b"SELECT key, n FROM per_key ORDER BY key")
        assert status == 200 and ans["columns"] == ["key", "n"]
        assert [r[0] for r in ans["rows"]] == sorted(r[0] for r in ans["rows"])
        status, ans = http_json(dash.url + "api/sql", b"DROP TABLE per_key")
        assert status == 400 and "only SELECT" in ans["error"]
        _wait(lambda: http_json(dash.url + "api/state")[1]["status"] == "finished", 30)
        _, last = http_json(dash.url + "api/state")
        assert last["totals"]["records_in"] == 12_000
        assert last["result"]["completed"] is True
        assert sum(r[1] for r in last["panels"][0]["rows"]) == 12_000
        assert last["tables"]["latest"]["kept"] == 50
        m = _metrics(dash.url)
        assert m[("tideflow_run_running", (("flow", "srv"),))] == 0
        assert m[("tideflow_sql_queries_total", (("outcome", "refused"),))] == 1


def test_server_sent_events_push_state(running) -> None:  # type: ignore[no-untyped-def]
    with Dashboard(DashboardSettings(port=0, push_interval=0.1)) as dash:
        # Long enough that the stream sees several changes even when the client is slow to connect.
        running(counting_flow("sse", events=20_000, rate=4000), [dash])
        got: list[bytes] = []
        with urllib.request.urlopen(dash.url + "api/events", timeout=10) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            for line in resp:
                if line.startswith(b"data: "):
                    got.append(line)
                if len(got) >= 3:
                    break
        assert all(b'"flow": "sse"' in g for g in got)


def test_token_required_off_loopback_and_enforced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TIDEFLOW_DASHBOARD_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="needs a token"):
        Dashboard(DashboardSettings(host="0.0.0.0", port=0))
    token = "s3cret-token-for-tests"
    monkeypatch.setenv("TIDEFLOW_DASHBOARD_TOKEN", token)
    with Dashboard(DashboardSettings(port=0)) as dash:
        assert http(dash.url + "api/state")[0] == 401
        assert http(dash.url + "metrics")[0] == 401
        status, body = http(dash.url + "api/state", headers={"Authorization": f"Bearer {token}"})
        assert status == 200
        assert token.encode() not in body
        assert (
            http(dash.url + "api/state", headers={"Authorization": "Bearer wrong-token-xx"})[0]
            == 401
        )


def test_port_in_use_is_a_clear_error() -> None:
    from tideflow._errors import ConnectorError

    port = free_port()
    with (
        Dashboard(DashboardSettings(port=port)),
        pytest.raises(ConnectorError, match="cannot listen"),
    ):
        Dashboard(DashboardSettings(port=port)).start()


def test_a_panel_that_writes_is_refused_before_the_run() -> None:
    with pytest.raises(ConfigError, match=r"panel 'bad'.*only SELECT"):
        Dashboard(DashboardSettings(port=0, panels=(Panel("bad", "DELETE FROM alerts"),)))


def test_browser_token_moves_into_a_cookie(monkeypatch: pytest.MonkeyPatch) -> None:
    import http.client

    token = "another-token-for-tests"
    monkeypatch.setenv("TIDEFLOW_DASHBOARD_TOKEN", token)
    with Dashboard(DashboardSettings(port=0)) as dash:
        host, port = dash.address
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request("GET", f"/?token={token}")
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 303 and resp.getheader("Location") == "/"
            cookie = resp.getheader("Set-Cookie") or ""
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie
            conn.request("GET", "/api/state", headers={"Cookie": cookie.split(";")[0]})
            resp = conn.getresponse()
            assert resp.status == 200 and token.encode() not in resp.read()
            conn.request("GET", "/", headers={"Cookie": "tideflow_dashboard=wrong"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 401
        finally:
            conn.close()


def test_model_metrics_panel_from_ml_evaluate() -> None:
    pytest.importorskip("tideflow.ml")
    import tideflow as tf
    from tideflow.connectors import live
    from tideflow.dashboard import model_panel
    from tideflow.ml import evaluate, linear_model, metrics, preprocessing
    from tideflow.testing import TestingSource

    rows = [{"x": float(i * 7 % 10), "y": i * 7 % 10 >= 5} for i in range(2000)]
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    flow = tf.Dataflow("ml_panel")
    src = flow.source(TestingSource(rows, batch_size=100))
    evaluate(src, model, metrics.Accuracy(), target="y").sink(live.sink_live("model", keep=500))
    with Dashboard(DashboardSettings(port=0, panels=(model_panel("model"),))) as dash:
        tf.run(flow, observers=[dash], batch_size=100)
        _, state = http_json(dash.url + "api/state")
    panel = state["panels"][0]
    assert panel["kind"] == "line" and panel["error"] is None
    assert panel["rows"][-1][0] == 2000 and panel["rows"][-1][1] > 0.8
    assert len(panel["rows"]) == 20
