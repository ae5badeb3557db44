"""Daemon configuration: the example file, every validation message names its key, CLI overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from sensor.commands.config import config as config_cmd
from sensor.daemon.config import (
    Config,
    ConfigError,
    SinkConfig,
    check_runnable,
    load_config,
    parse_config,
    parse_size,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "contrib" / "radsensor.example.toml"


def test_example_config_is_valid_and_sets_every_key():
    cfg = load_config(str(EXAMPLE))
    assert cfg.capture.interfaces == ("eth1",) and cfg.capture.buffer_size == 64 * 1024 * 1024
    assert [s.type for s in cfg.sinks] == ["syslog", "jsonl"]
    assert cfg.sinks[0].tls.verify is True and cfg.sinks[1].max_bytes == 100 * 1024 * 1024
    text = EXAMPLE.read_text()
    # every option of every section appears in the example (documented, not just defaulted)
    for section in ("capture", "flows", "detect", "metrics", "daemon"):
        for name in getattr(Config(), section).__slots__:
            assert f"\n{name} = " in text, f"{section}.{name} missing from the example"
    for name in SinkConfig.__slots__:
        if name != "tls":
            assert f"{name} = " in text, f"sinks.{name} missing from the example"


@pytest.mark.parametrize("raw, message", [
    ({"capture": {"snaplen": "big"}}, "capture.snaplen: expected an integer, got 'big'"),
    ({"capture": {"snaplen": 10}}, "capture.snaplen: must be 64..262144, got 10"),
    ({"capture": {"buffer_size": "1KiB"}}, "capture.buffer_size: must be at least 1 MiB"),
    ({"capture": {"buffer_size": "lots"}}, "capture.buffer_size: expected a size"),
    ({"capture": {"promisc": "yes"}}, "capture.promisc: expected true or false"),
    ({"capture": {"snaplne": 100}}, "capture.snaplne: unknown key"),
    ({"capture": {"interfaces": ["a", "b"], "workers": 2}}, "capture.workers: several workers share one"),
    ({"captur": {}}, "captur: unknown section"),
    ({"flows": {"tcp_idle": 0}}, "flows.tcp_idle: must be > 0"),
    ({"detect": {"min_severity": "loud"}}, "detect.min_severity: must be info"),
    ({"metrics": {"port": 70000}}, "metrics.port: must be 0..65535"),
    ({"daemon": {"group": "adm"}}, "daemon.group: needs daemon.user"),
    ({"sinks": {"type": "stdout"}}, "sinks: expected an array of tables"),
    ({"sinks": [{"type": "kafka"}]}, "sinks[0].type: must be one of stdout, jsonl, syslog"),
    ({"sinks": [{"type": "syslog", "spool_dir": "/x"}]}, "sinks[0].url: required"),
    ({"sinks": [{"type": "syslog", "url": "http://h:1", "spool_dir": "/x"}]}, "sinks[0].url: scheme must be"),
    ({"sinks": [{"type": "syslog", "url": "tcp://h:99999", "spool_dir": "/x"}]}, "sinks[0].url: bad port"),
    ({"sinks": [{"type": "syslog", "url": "tcp://h:514"}]}, "sinks[0].spool_dir: required"),
    ({"sinks": [{"type": "syslog", "url": "tcp://h:514", "spool_dir": "/x", "format": "xml"}]},
     "sinks[0].format: must be one of cef, leef, json, ecs"),
    ({"sinks": [{"type": "syslog", "url": "tcp://h:514", "spool_dir": "/x", "tls": {"cert": "c.pem"}}]},
     "sinks[0].tls: client certificate options need a tls:// url"),
    ({"sinks": [{"type": "syslog", "url": "tls://h", "spool_dir": "/x", "tls": {"verify": "no"}}]},
     "sinks[0].tls.verify: expected true or false"),
    ({"sinks": [{"type": "syslog", "url": "tcp://h", "spool_dir": "/x", "facility": "local9"}]},
     "sinks[0].facility: unknown facility"),
    ({"sinks": [{"type": "jsonl"}]}, "sinks[0].path: required"),
    ({"sinks": [{"type": "stdout", "name": "a"}, {"type": "stdout", "name": "a"}]}, "sinks.name: two sinks"),
])
def test_errors_name_the_key_and_the_problem(raw, message):
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    assert str(err.value).startswith(message), str(err.value)


def test_sizes():
    assert parse_size("k", "64MiB") == 64 << 20 and parse_size("k", "2 MB") == 2_000_000
    assert parse_size("k", "4096") == 4096


def test_cli_overrides_win_and_are_validated():
    cfg = load_config(str(EXAMPLE))
    out = cfg.with_overrides(capture={"interfaces": ("veth9",), "filter": None, "buffer_size": "128MiB"},
                             detect={"model": "m.rsm"},
                             sinks=[SinkConfig(type="jsonl", path="/tmp/a.jsonl")])
    assert out.capture.interfaces == ("veth9",) and out.capture.filter == cfg.capture.filter
    assert out.capture.buffer_size == 128 << 20 and out.detect.model == "m.rsm"
    assert [s.type for s in out.sinks] == ["jsonl"]
    with pytest.raises(ConfigError, match="capture.snaplen"):
        cfg.with_overrides(capture={"snaplen": 5})
    with pytest.raises(ConfigError, match=r"sinks\[0\].url"):
        cfg.with_overrides(sinks=[SinkConfig(type="syslog", url="ftp://x", spool_dir="/s")])


def test_run_needs_interface_and_model():
    with pytest.raises(ConfigError, match="capture.interfaces"):
        check_runnable(Config())
    with pytest.raises(ConfigError, match="detect.model"):
        check_runnable(parse_config({"capture": {"interfaces": ["lo"]}}))


def test_config_check_command(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[capture]\ninterfaces = ["eth1"]\n[[sinks]]\ntype = "jsonl"\npath = "/tmp/x.jsonl"\n')
    res = CliRunner().invoke(config_cmd, ["check", str(good)])
    assert res.exit_code == 0 and "ok" in res.output
    bad = tmp_path / "bad.toml"
    bad.write_text('[capture]\ntimeout_ms = 0\n')
    res = CliRunner().invoke(config_cmd, ["check", str(bad)])
    assert res.exit_code == 2 and "capture.timeout_ms: must be 1..10000" in res.output
    broken = tmp_path / "broken.toml"
    broken.write_text('[capture\n')
    res = CliRunner().invoke(config_cmd, ["check", str(broken)])
    assert res.exit_code == 2 and "not valid TOML" in res.output and "Traceback" not in res.output
    missing_model = tmp_path / "m.toml"
    missing_model.write_text(f'[detect]\nmodel = "{tmp_path / "nope.rsm"}"\n')
    res = CliRunner().invoke(config_cmd, ["check", str(missing_model)])
    assert res.exit_code == 2 and "detect.model:" in res.output
