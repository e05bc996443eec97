#!/usr/bin/env python3
"""Opens many idle tunnels to a piko-server's upstream port, cheaply, and holds them.

Each tunnel does the handshake of PROTOCOL.md 1.1 (GET /piko/v1/upstream/{endpoint} with
Upgrade: piko-reverse-h2, then 101) and then speaks the least HTTP/2 a sidecar must: it is
the HTTP/2 *server* of the tunnel, so it sends its SETTINGS (MAX_CONCURRENT_STREAMS,
ENABLE_CONNECT_PROTOCOL) and a connection WINDOW_UPDATE, ACKs the server's SETTINGS and
answers its PINGs, so that the server's heartbeat keeps the tunnel. Everything else the
server sends is read and dropped. No stream is ever served: the tunnels stay idle.

    tunnels.py HOST:PORT N [--endpoints E] [--prefix P] [--tls] [--parallel K]

Endpoint names are P0 .. P(E-1), tunnel i on P(i mod E). Prints "up N" once N tunnels
have their 101 and have sent their SETTINGS, then "down K" lines if some close, and holds
them until SIGTERM or SIGINT. Python standard library only.
"""

import argparse
import asyncio
import signal
import ssl
import struct
import sys

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_SETTINGS, FRAME_PING, FRAME_WINDOW_UPDATE = 0x4, 0x6, 0x8
FLAG_ACK = 0x1


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + \
        struct.pack(">I", stream) + payload


# SETTINGS_MAX_CONCURRENT_STREAMS 1024, SETTINGS_ENABLE_CONNECT_PROTOCOL 1, then a
# connection WINDOW_UPDATE, as piko-sidecar sends them (PROTOCOL.md 1.1 step 5).
OUR_SETTINGS = frame(FRAME_SETTINGS, 0, 0, struct.pack(">HIHI", 0x3, 1024, 0x8, 1)) + \
    frame(FRAME_WINDOW_UPDATE, 0, 0, struct.pack(">I", (16 << 20) - 65535))
SETTINGS_ACK = frame(FRAME_SETTINGS, FLAG_ACK, 0)


class Tunnel(asyncio.Protocol):
    def __init__(self, endpoint, host, state):
        self.endpoint, self.host, self.state = endpoint, host, state
        self.buf = bytearray()
        self.upgraded = False
        self.preface_seen = False
        self.transport = None
        self.up = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        transport.write(("GET /piko/v1/upstream/%s HTTP/1.1\r\nHost: %s\r\n"
                         "Connection: Upgrade\r\nUpgrade: piko-reverse-h2\r\n"
                         "Piko-Sidecar-Id: bench-tunnels\r\n\r\n"
                         % (self.endpoint, self.host)).encode())

    def data_received(self, data):
        self.buf += data
        if not self.upgraded:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buf[:end]).split(b"\r\n", 1)[0]
            if b" 101 " not in status + b" ":
                self.fail("handshake refused: " + status.decode(errors="replace"))
                return
            del self.buf[:end + 4]
            self.upgraded = True
            self.transport.write(OUR_SETTINGS)
            if not self.up.done():
                self.up.set_result(True)
        if not self.preface_seen:
            if len(self.buf) < len(PREFACE):
                return
            if bytes(self.buf[:len(PREFACE)]) != PREFACE:
                self.fail("no client preface")
                return
            del self.buf[:len(PREFACE)]
            self.preface_seen = True
        self.frames()

    def frames(self):
        out = []
        while len(self.buf) >= 9:
            length = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + length:
                break
            ftype, flags = self.buf[3], self.buf[4]
            payload = bytes(self.buf[9:9 + length])
            del self.buf[:9 + length]
            if ftype == FRAME_SETTINGS and not flags & FLAG_ACK:
                out.append(SETTINGS_ACK)
            elif ftype == FRAME_PING and not flags & FLAG_ACK:
                out.append(frame(FRAME_PING, FLAG_ACK, 0, payload))
        if out:
            self.transport.write(b"".join(out))

    def fail(self, why):
        if not self.up.done():
            self.up.set_exception(RuntimeError(why))
        self.transport.close()

    def connection_lost(self, exc):
        if not self.up.done():
            self.up.set_exception(RuntimeError("closed during the handshake"))
        elif self.upgraded:
            self.state["down"] += 1
            print("down %d" % self.state["down"], flush=True)


async def open_one(args, i, sslctx, sem, state):
    host, port = args.addr.rsplit(":", 1)
    endpoint = "%s%d" % (args.prefix, i % args.endpoints)
    loop = asyncio.get_running_loop()
    async with sem:
        for attempt in range(20):
            try:
                _, proto = await loop.create_connection(
                    lambda: Tunnel(endpoint, args.addr, state), host, int(port), ssl=sslctx,
                    server_hostname=host if sslctx else None)
                await proto.up
                return proto
            except (OSError, RuntimeError) as e:
                if attempt == 19:
                    raise RuntimeError("tunnel %d (%s): %s" % (i, endpoint, e))
                await asyncio.sleep(0.1 * (attempt + 1))


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("addr", help="upstream port, HOST:PORT")
    ap.add_argument("n", type=int, help="tunnels to open")
    ap.add_argument("--endpoints", type=int, default=0, help="endpoint names (default: n)")
    ap.add_argument("--prefix", default="ep", help="endpoint name prefix")
    ap.add_argument("--tls", action="store_true", help="TLS to the upstream port (no verify)")
    ap.add_argument("--parallel", type=int, default=200, help="handshakes in flight")
    args = ap.parse_args()
    args.endpoints = args.endpoints or args.n
    sslctx = None
    if args.tls:
        sslctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        sslctx.check_hostname = False
        sslctx.verify_mode = ssl.CERT_NONE
    state = {"down": 0}
    sem = asyncio.Semaphore(args.parallel)
    tunnels = await asyncio.gather(*(open_one(args, i, sslctx, sem, state)
                                     for i in range(args.n)))
    print("up %d" % len(tunnels), flush=True)
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, lambda: stop.done() or stop.set_result(None))
    loop.add_signal_handler(signal.SIGINT, lambda: stop.done() or stop.set_result(None))
    await stop
    for t in tunnels:
        t.transport.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except RuntimeError as e:
        print("error: %s" % e, file=sys.stderr, flush=True)
        sys.exit(1)
