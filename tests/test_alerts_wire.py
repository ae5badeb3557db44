"""Independent parsers for what the alert sinks put on the wire (RFC 5424, CEF, LEEF 2.0).

Written from the format descriptions, not from sensor/alerts, so the formatters are checked against
a second implementation. Other test_alerts_* modules import these; the tests here pin the parsers
themselves on hand-written lines.
"""

from __future__ import annotations

import re

_CEF_KEY = re.compile(r"(?:^| )([A-Za-z][A-Za-z0-9_]*)=")
_CEF_UNESC = {"\\": "\\", "=": "=", "n": "\n", "r": "\r", "|": "|"}


def _split_escaped(s: str, sep: str, maxsplit: int) -> list[str]:
    """Split on unescaped ``sep``; backslash escapes are removed from the fields."""
    out, cur, i = [], [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            cur.append(s[i + 1])
            i += 2
            continue
        if c == sep and len(out) < maxsplit:
            out.append("".join(cur))
            cur = []
            i += 1
            if len(out) == maxsplit:
                out.append(s[i:])
                return out
            continue
        cur.append(c)
        i += 1
    out.append("".join(cur))
    return out


def _cef_unescape(v: str) -> str:
    out, i = [], 0
    while i < len(v):
        if v[i] == "\\" and i + 1 < len(v):
            out.append(_CEF_UNESC.get(v[i + 1], "\\" + v[i + 1]))
            i += 2
        else:
            out.append(v[i])
            i += 1
    return "".join(out)


def parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """``CEF:0|…`` → (7 header fields incl. 'CEF:0', extension dict)."""
    assert line.startswith("CEF:0|"), line[:20]
    fields = _split_escaped(line, "|", 7)
    header, ext = fields[:7], fields[7]
    # Keys are found where an unescaped '=' follows a bare word at start or after a space.
    # The remainder went through _split_escaped, which removed escapes: redo it on the raw tail.
    raw_tail = line[_raw_tail_offset(line, 7) :]
    matches = list(_CEF_KEY.finditer(raw_tail))
    ext = {}
    for j, m in enumerate(matches):
        end = matches[j + 1].start() if j + 1 < len(matches) else len(raw_tail)
        ext[m.group(1)] = _cef_unescape(raw_tail[m.end() : end])
    return header, ext


def _raw_tail_offset(line: str, nsep: int) -> int:
    seen, i = 0, 0
    while i < len(line):
        if line[i] == "\\":
            i += 2
            continue
        if line[i] == "|":
            seen += 1
            if seen == nsep:
                return i + 1
        i += 1
    raise AssertionError("not enough header fields")


def parse_leef(line: str) -> tuple[list[str], dict[str, str]]:
    """``LEEF:2.0|V|P|Ver|EventID|DELIM|attrs`` → (6 header fields, attributes)."""
    assert line.startswith("LEEF:2.0|"), line[:20]
    fields = _split_escaped(line[: _raw_tail_offset(line, 6)], "|", 6)[:6]
    delim_spec = fields[5]
    if delim_spec.lower().startswith(("x", "0x")):
        delim = chr(int(delim_spec.lower().removeprefix("0x").removeprefix("x"), 16))
    else:
        delim = delim_spec
    attrs = {}
    for part in line[_raw_tail_offset(line, 6) :].split(delim):
        if part:
            k, _, v = part.partition("=")
            attrs[k] = v
    return fields, attrs


_SYSLOG_HEAD = re.compile(r"^<(\d{1,3})>(\d) (\S+) (\S+) (\S+) (\S+) (\S+) ")


def parse_sd(s: str) -> tuple[dict[str, dict[str, str]], str]:
    """Structured data at the start of ``s`` → ({sd_id: {name: value}}, rest after one space)."""
    if s.startswith("- "):
        return {}, s[2:]
    sd: dict[str, dict[str, str]] = {}
    i = 0
    while i < len(s) and s[i] == "[":
        j = i + 1
        while s[j] not in " ]":
            j += 1
        sd_id, params = s[i + 1 : j], {}
        i = j
        while s[i] == " ":
            k = s.index("=", i)
            name = s[i + 1 : k]
            assert s[k + 1] == '"'
            i, val = k + 2, []
            while s[i] != '"':
                if s[i] == "\\" and s[i + 1] in '"\\]':
                    val.append(s[i + 1])
                    i += 2
                else:
                    val.append(s[i])
                    i += 1
            params[name] = "".join(val)
            i += 1
        assert s[i] == "]", s[i:]
        sd[sd_id] = params
        i += 1
    assert s[i] == " "
    return sd, s[i + 1 :]


def parse_syslog(line: str) -> dict:
    """One RFC 5424 message (no framing) → dict of header fields, ``sd`` and ``msg``."""
    m = _SYSLOG_HEAD.match(line)
    assert m, line[:80]
    pri, ver, ts, host, app, procid, msgid = m.groups()
    sd, msg = parse_sd(line[m.end() :])
    return {
        "pri": int(pri),
        "version": int(ver),
        "timestamp": ts,
        "hostname": host,
        "app": app,
        "procid": procid,
        "msgid": msgid,
        "sd": sd,
        "msg": msg,
    }


# ------------------------------------------------------------------------------ the parsers' own tests


def test_parse_cef_handwritten():
    line = r"CEF:0|Ven\|dor|Prod|1.0|sig\\1|Na\|me|7|src=10.0.0.1 msg=a\=b c\\d\nx cs1=WS 2 cs1Label=aet"
    hdr, ext = parse_cef(line)
    assert hdr == ["CEF:0", "Ven|dor", "Prod", "1.0", "sig\\1", "Na|me", "7"]
    assert ext == {"src": "10.0.0.1", "msg": "a=b c\\d\nx", "cs1": "WS 2", "cs1Label": "aet"}


def test_parse_leef_handwritten():
    line = "LEEF:2.0|V|P|1|E\\|1|x09|src=1.2.3.4\tname=a=b c\tsev=5"
    hdr, attrs = parse_leef(line)
    assert hdr == ["LEEF:2.0", "V", "P", "1", "E|1", "x09"]
    assert attrs == {"src": "1.2.3.4", "name": "a=b c", "sev": "5"}


def test_parse_syslog_handwritten():
    line = '<163>1 2026-03-04T03:12:00.000Z h radsensor 12 r.x [a@1 k="v\\"\\]\\\\" z="1"][b@2 q=""] body [x]'
    d = parse_syslog(line)
    assert d["pri"] == 163 and d["msgid"] == "r.x" and d["procid"] == "12"
    assert d["sd"] == {"a@1": {"k": 'v"]\\', "z": "1"}, "b@2": {"q": ""}}
    assert d["msg"] == "body [x]"
