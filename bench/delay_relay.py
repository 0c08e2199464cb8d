#!/usr/bin/env python3
"""delay_relay.py LISTEN_PORT TARGET_HOST TARGET_PORT [--delay-ms 25] [--max-seconds 3600]

A TCP relay on 127.0.0.1 that delays every chunk by --delay-ms in each
direction, so a connection through it sees a round trip of twice that.
It stands in for a WAN link between warren and the broker (this kernel has
no netem). The first bytes of each connection are held for one extra round
trip, as a real TCP handshake would cost. Order is preserved; nothing is
dropped. Exits by itself after --max-seconds.
"""
import argparse
import asyncio
import sys
import time


async def pump(reader, writer, delay, hold_until=None):
    queue = asyncio.Queue()

    async def read_side():
        while True:
            data = await reader.read(65536)
            queue.put_nowait((time.monotonic(), data))
            if not data:
                return

    async def write_side():
        while True:
            stamp, data = await queue.get()
            due = max(stamp + delay, hold_until or 0)
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                try:
                    writer.write_eof()
                except OSError:
                    pass
                return
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(read_side(), write_side())
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser(usage=__doc__)
    ap.add_argument("listen_port", type=int)
    ap.add_argument("target_host")
    ap.add_argument("target_port", type=int)
    ap.add_argument("--delay-ms", type=float, default=25.0)
    ap.add_argument("--max-seconds", type=float, default=3600)
    a = ap.parse_args()
    delay = a.delay_ms / 1000

    async def handle(client_reader, client_writer):
        accepted = time.monotonic()
        try:
            up_reader, up_writer = await asyncio.open_connection(a.target_host, a.target_port)
        except OSError:
            client_writer.close()
            return
        for sock in (client_writer.get_extra_info("socket"), up_writer.get_extra_info("socket")):
            import socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        handshake_done = accepted + 2 * delay
        await asyncio.gather(
            pump(client_reader, up_writer, delay, hold_until=handshake_done),
            pump(up_reader, client_writer, delay),
        )

    server = await asyncio.start_server(handle, "127.0.0.1", a.listen_port)
    print(f"relay 127.0.0.1:{a.listen_port} -> {a.target_host}:{a.target_port}, "
          f"{a.delay_ms} ms each way", file=sys.stderr, flush=True)
    async with server:
        await asyncio.sleep(a.max_seconds)


if __name__ == "__main__":
    asyncio.run(main())
