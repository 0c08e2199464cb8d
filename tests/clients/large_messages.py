#!/usr/bin/env python3
"""large_messages.py URL SIZE COUNT QUEUE

Publishes COUNT messages of SIZE bytes to QUEUE (default exchange, with
confirms), then consumes them with no prefetch limit (the broker sends them
all at once) and checks each body byte for byte. Prints "RESULT ok".
"""
import sys

import pika

PATTERN = bytes(range(251))


def body(size, index):
    base = PATTERN * (size // len(PATTERN) + 2)
    start = index % len(PATTERN)
    return base[start:start + size]


def main():
    url, size, count, queue = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    params = pika.URLParameters(url)
    params.heartbeat = 0
    with pika.BlockingConnection(params) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        for i in range(count):
            ch.basic_publish("", queue, body(size, i))
        received = 0
        for _method, _props, got in ch.consume(queue, auto_ack=True, inactivity_timeout=120):
            if got is None:
                sys.exit(f"timed out after {received} of {count} messages")
            if got != body(size, received):
                sys.exit(f"message {received}: {len(got)} bytes, not the {size} published")
            received += 1
            if received == count:
                break
        ch.cancel()
    print("RESULT ok")


main()
