"""Ordinary traffic so that not everything is DICOM/HL7: DNS, NTP, HTTP, HTTPS (TLS records),
SMB2 between PCs and the file server, syslog, an occasional admin RDP session.

Payloads are built with struct to the protocols' wire formats (DNS, NTP v4, SMB2 ECHO/READ,
TLS 1.2 records, RFC 3164 syslog); their content is synthetic.
"""

from __future__ import annotations

import random
import struct

from .context import US, DayContext

_DNS_HDR = struct.Struct("!HHHHHH")
_NTP = struct.Struct("!BBbbII4sQQQQ")  # li/vn/mode, stratum, poll, precision, ...
_NBSS = struct.Struct("!I")
_SMB2 = struct.Struct("<4sHHIHHIIQIIQ16s")
_TLS = struct.Struct("!BHH")
NTP_EPOCH = 2_208_988_800

INTERNAL_NAMES = ["pacs", "vna", "ris", "engine", "emr", "dc1", "ntp1", "proxy1", "syslog1", "fileserver"]
EXTERNAL_NAMES = ["www.example.com", "updates.example.net", "cdn.example.org", "mail.example.com",
                  "portal.example.net", "news.example.org"]


def _qname(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"


def dns_pair(qid: int, name: str, addr: bytes) -> tuple[bytes, bytes]:
    q = _DNS_HDR.pack(qid, 0x0100, 1, 0, 0, 0) + _qname(name) + b"\x00\x01\x00\x01"
    a = (_DNS_HDR.pack(qid, 0x8180, 1, 1, 0, 0) + _qname(name) + b"\x00\x01\x00\x01"
         + b"\xc0\x0c\x00\x01\x00\x01" + struct.pack("!IH", 300, 4) + addr)
    return q, a


def ntp_pair(t_us: int) -> tuple[bytes, bytes]:
    secs = t_us // US + NTP_EPOCH
    frac = (t_us % US) * (1 << 32) // US
    ts = secs << 32 | frac
    q = _NTP.pack(0x23, 0, 6, -20, 0, 0, b"\0\0\0\0", 0, 0, 0, ts)
    a = _NTP.pack(0x24, 2, 6, -20, 0x100, 0x200, b"\xcb\x00\x71\x7b", ts - (5 << 32), ts, ts + 50, ts + 80)
    return q, a


def smb2(cmd: int, msg_id: int, body: bytes, response: bool, session: int = 0x4000_0001, tree: int = 1) -> bytes:
    flags = 1 if response else 0
    hdr = _SMB2.pack(b"\xfeSMB", 64, 1, 0, cmd, 1, flags, 0, msg_id, 0xFEFF, tree, session, b"\0" * 16)
    msg = hdr + body
    return _NBSS.pack(len(msg)) + msg


def smb2_echo(msg_id: int, response: bool) -> bytes:
    return smb2(0x000D, msg_id, struct.pack("<HH", 4, 0), response)


def smb2_read(msg_id: int, length: int, offset: int, r: random.Random, response: bool) -> bytes:
    if not response:
        body = struct.pack("<HBBIQ16sIIIHH", 49, 0x50, 0, length, offset, b"\x11" * 16, 1, 0, 0, 0, 0) + b"\0"
        return smb2(0x0008, msg_id, body, False)
    data = r.randbytes(length)
    body = struct.pack("<HBBIII", 17, 0x50, 0, length, 0, 0) + data
    return smb2(0x0008, msg_id, body, True)


def tls_record(ctype: int, payload: bytes) -> bytes:
    return _TLS.pack(ctype, 0x0303, len(payload)) + payload


def http_pair(r: random.Random, host: str, path: str, size: int) -> tuple[bytes, bytes]:
    req = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64)\r\n"
           f"Accept: */*\r\nConnection: close\r\n\r\n").encode()
    body = r.randbytes(size)
    rsp = (f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n"
           f"Connection: close\r\n\r\n").encode() + body
    return req, rsp


def tls_session(r: random.Random, up: int, down: int, rounds: int = 1) -> list:
    """TLS-shaped exchange: handshake-sized records then application data records."""
    items = [(0, 0, tls_record(22, b"\x01" + r.randbytes(300))),
             (1, r.randint(5000, 40000), tls_record(22, b"\x02" + r.randbytes(2800))),
             (0, r.randint(500, 3000), tls_record(20, b"\x01") + tls_record(22, r.randbytes(40)))]
    for _ in range(rounds):
        items.append((0, r.randint(1000, 5000), tls_record(23, r.randbytes(up))))
        left = down
        first = True
        while left > 0:
            n = min(left, 16384)
            items.append((1, r.randint(5000, 60000) if first else 0, tls_record(23, r.randbytes(n))))
            first = False
            left -= n
    return items


def background_day(ctx: DayContext) -> None:
    site, r = ctx.site, ctx.rng
    dc, ntp, syslog, proxy = site.one("dc"), site.one("ntp"), site.one("syslog"), site.one("proxy")
    pcs = site.role("pc") + site.role("workstation")
    ext = site.external_net
    # DNS: every device resolves internal names; PCs also external ones
    for dev in site.devices:
        if dev is dc:
            continue
        per_hour = 25 if dev in pcs else 4
        for e, h in enumerate(ctx.wall_hours):  # elapsed hour e, local clock hour h
            lam = per_hour * (max(ctx.activity(dev, h), 0.1) if dev in pcs else 1.0)
            for _ in range(int(lam * ctx.volume + r.random())):
                t = ctx.t0 + int((e * 3600 + r.random() * 3600) * US)
                external = dev in pcs and r.random() < 0.5
                name = r.choice(EXTERNAL_NAMES) if external else r.choice(INTERNAL_NAMES) + "." + site.domain
                addr = (ext[r.randint(10, 250)] if external else site.subnet[r.randint(2, 60)]).packed
                q, a = dns_pair(r.getrandbits(16), name, addr)
                ctx.udp(t, dev.ip, dc.ip, ctx.eport(dev.ip, r), 53, [(0, 0, q), (1, r.randint(300, 3000), a)], "dns")
    # NTP: everyone polls NTP1 every ~1024 s; NTP1 polls an external server
    for dev in site.devices:
        if dev is ntp:
            continue
        k = 0
        off = r.randint(0, 1023)
        while (off + k * 1024) < ctx.day_s:
            t = ctx.t0 + (off + k * 1024) * US + r.randint(0, 999_999)
            q, a = ntp_pair(t)
            ctx.udp(t, dev.ip, ntp.ip, 123, 123, [(0, 0, q), (1, r.randint(200, 800), a)], "ntp")
            k += 1
    for k in range(ctx.day_s // 1024):
        t = ctx.t0 + (k * 1024 + 7) * US
        q, a = ntp_pair(t)
        ctx.udp(t, ntp.ip, str(ext[123]), 123, 123, [(0, 0, q), (1, r.randint(8000, 30000), a)], "ntp")
    # syslog from servers and the PACS (RFC 3164 TIMESTAMP is the sender's local clock time)
    senders = [d for d in site.devices if d.role in ("pacs", "archive", "mwl", "engine", "dc", "proxy", "ris", "emr")]
    for dev in senders:
        for _ in range(int(30 * ctx.n_hours * ctx.volume)):
            t = ctx.t0 + int(r.random() * ctx.day_s * US)
            ts = ctx.when(t).strftime("%b %d %H:%M:%S").replace(" 0", "  ")
            msg = r.choice(["service heartbeat ok", "disk usage 61%", "user login success user=svc_synth",
                            "backup job completed", "queue depth 0", "certificate check ok"])
            line = f"<{r.choice((134, 133, 30, 86))}>{ts} {dev.name.lower()} synthd[{r.randint(100, 9999)}]: {msg}"
            ctx.udp(t, dev.ip, syslog.ip, r.randint(32768, 60999), 514, [(0, 0, line.encode())], "syslog")
    # web: PCs/workstations through the proxy (HTTP) and proxy to the outside (HTTPS)
    for dev in pcs:
        for e, h in enumerate(ctx.wall_hours):
            lam = 12 * ctx.activity(dev, h) * ctx.volume
            for _ in range(int(lam + r.random())):
                t = ctx.t0 + int((e * 3600 + r.random() * 3600) * US)
                size = min(int(r.lognormvariate(7.2, 1.2)), 200_000) + 200
                host = r.choice(EXTERNAL_NAMES)
                req, rsp = http_pair(random.Random(r.getrandbits(32)), host, f"/p/{r.randint(1, 9999)}", size)
                ctx.tcp(t, dev.ip, proxy.ip, 8080, lambda q=req, a=rsp: [(0, 0, q), (1, 20000, a)], "http",
                        close="server-fin")
                s = ctx.seed()
                ctx.tcp(t + 2000, proxy.ip, str(ext[r.randint(10, 250)]), 443,
                        lambda s=s, n=size: tls_session(random.Random(s), 600, n), "https")
    # SMB: PCs and workstations read files from the DC/file server
    for dev in pcs:
        for e, h in enumerate(ctx.wall_hours):
            lam = 2 * ctx.activity(dev, h) * ctx.volume
            for _ in range(int(lam + r.random())):
                t = ctx.t0 + int((e * 3600 + r.random() * 3600) * US)
                ctx.tcp(t, dev.ip, dc.ip, 445, lambda s=ctx.seed(): smb_session(random.Random(s)), "smb")
    # an admin RDP session from PC3 to the DC on weekdays
    if not ctx.weekend:
        pc3 = site.by_name.get("PC3", pcs[0])
        t = ctx.wall((10 * 3600 + r.randint(0, 7200)) * US)  # 10:00-12:00 local
        ctx.tcp(t, pc3.ip, dc.ip, 3389, lambda s=ctx.seed(): rdp_session(random.Random(s), 20), "rdp")


def smb_session(r: random.Random, reads: int | None = None) -> list:
    items = [(0, 0, smb2_echo(1, False)), (1, 400, smb2_echo(1, True))]
    for k in range(reads if reads is not None else r.randint(1, 6)):
        n = r.choice((1024, 4096, 4096, 8192, 16384)) if r.random() < 0.95 else 65536
        items.append((0, r.randint(300, 20000), smb2_read(k + 2, n, k * n, r, False)))
        items.append((1, r.randint(300, 3000), smb2_read(k + 2, n, k * n, r, True)))
    return items


def rdp_session(r: random.Random, rounds: int) -> list:
    """TPKT-framed RDP-shaped exchange (X.224 connection request/confirm, then opaque PDUs)."""
    cr = b"\x03\x00\x00\x13\x0e\xe0\x00\x00\x00\x00\x00\x01\x00\x08\x00\x03\x00\x00\x00"
    cc = b"\x03\x00\x00\x13\x0e\xd0\x00\x00\x12\x34\x00\x02\x00\x08\x00\x01\x00\x00\x00"
    items = [(0, 0, cr), (1, 2000, cc)]
    # after negotiation RDP runs inside TLS (PROTOCOL_SSL selected in the confirm)
    items += tls_session(r, 200, 6000, rounds)
    return items
