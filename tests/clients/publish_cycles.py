#!/usr/bin/env python3
"""publish_cycles.py URL N QUEUE TAG [--confirm]

N times: connect -> channel.open -> publish "TAG:i" to QUEUE via the default
exchange -> channel.close -> connection.close, with pika's BlockingConnection.
The queue must exist. Prints "RESULT client=pika n=N seconds=S per_cycle=S".
Exits non-zero on the first failure.
"""
import sys
import time
import urllib.parse

import pika


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    confirm = "--confirm" in sys.argv
    url, n, queue, tag = args[0], int(args[1]), args[2], args[3]
    params = pika.URLParameters(url)
    params.heartbeat = 0
    start = time.monotonic()
    for i in range(n):
        conn = pika.BlockingConnection(params)
        ch = conn.channel()
        if confirm:
            ch.confirm_delivery()
        ch.basic_publish("", queue, f"{tag}:{i}".encode(), pika.BasicProperties(delivery_mode=2))
        ch.close()
        conn.close()
    total = time.monotonic() - start
    print(f"RESULT client=pika n={n} seconds={total:.4f} per_cycle={total / n:.5f}")


if __name__ == "__main__":
    main()
