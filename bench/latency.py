#!/usr/bin/env python3
"""latency.py [--cycles N] [--delay-ms D] [--broker-port P]

The short-lived client benchmark: each real client (php-amqplib, php-amqp,
pika, amqplib) runs N connect -> channel -> publish -> close cycles
  1. directly against the broker across a link with a round trip of 2*D ms,
  2. through warren, with warren's upstream across that same link,
  3. through warren with no delay on the upstream link,
and the table shows seconds per cycle for each, the speed-up of (2) over
(1), and how much of the link's latency still shows in (2) - (3).
Every published message is counted afterwards.

Expects the broker already running (scripts/bench-latency.sh starts one).
warren runs with -t 300 so its upstream connection outlives the slow direct
runs, as it would in front of a busy PHP fleet; each warren run starts with
one untimed warm-up cycle (the upstream connection itself costs round trips
once, not per client).
"""
import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".cache" / "venv" / "bin" / "python")
CLIENTS = ROOT / "tests" / "clients"
COMMANDS = {
    "php-amqplib": ["php", str(CLIENTS / "publish_cycles.php"), "--lib=amqplib"],
    "php-amqp": ["php", str(CLIENTS / "publish_cycles.php"), "--lib=ext"],
    "pika": [PYTHON, str(CLIENTS / "publish_cycles.py")],
    "amqplib": ["node", str(CLIENTS / "publish_cycles.js")],
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what):
    for _ in range(200):
        if proc.poll() is not None:
            sys.exit(f"{what} exited early with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not listen on {port}")


def cycles(client, port, n, queue, tag):
    url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"
    out = subprocess.run(COMMANDS[client] + [url, str(n), queue, tag], capture_output=True, text=True,
                         timeout=600)
    if out.returncode != 0:
        sys.exit(f"{client} failed against port {port}:\n{out.stdout}\n{out.stderr}")
    return float(re.search(r"per_cycle=([0-9.]+)", out.stdout).group(1))


def main():
    ap = argparse.ArgumentParser(usage=__doc__)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--delay-ms", type=float, default=25.0)
    ap.add_argument("--broker-port", type=int, default=int(os.environ.get("WARREN_BENCH_BROKER_PORT", 5872)))
    a = ap.parse_args()

    relay_port, slow_port, fast_port = free_port(), free_port(), free_port()
    procs = []
    try:
        relay = subprocess.Popen([PYTHON, str(ROOT / "bench" / "delay_relay.py"), str(relay_port), "127.0.0.1",
                                  str(a.broker_port), "--delay-ms", str(a.delay_ms), "--max-seconds", "1800"],
                                 stderr=subprocess.DEVNULL)
        procs.append(relay)
        wait_port(relay_port, relay, "relay")
        for port, upstream in ((slow_port, relay_port), (fast_port, a.broker_port)):
            w = subprocess.Popen([str(ROOT / "target" / "release" / "warren"), "-p", str(port), "-t", "300",
                                  "--log-level", "warn", f"amqp://127.0.0.1:{upstream}"])
            procs.append(w)
            wait_port(port, w, "warren")

        import pika
        queue = f"bench.latency.{uuid.uuid4().hex[:8]}"
        params = pika.ConnectionParameters("127.0.0.1", a.broker_port)
        with pika.BlockingConnection(params) as conn:
            conn.channel().queue_declare(queue, durable=True)

        rtt = 2 * a.delay_ms
        rows, published = [], 0
        for client in COMMANDS:
            tag = uuid.uuid4().hex[:6]
            direct = cycles(client, relay_port, a.cycles, queue, tag + "d")
            cycles(client, slow_port, 1, queue, tag + "w")
            slow = cycles(client, slow_port, a.cycles, queue, tag + "s")
            cycles(client, fast_port, 1, queue, tag + "v")
            fast = cycles(client, fast_port, a.cycles, queue, tag + "f")
            published += 3 * a.cycles + 2
            rows.append((client, direct, slow, fast))

        with pika.BlockingConnection(params) as conn:
            ch = conn.channel()
            count = ch.queue_declare(queue, passive=True).method.message_count
            ch.queue_delete(queue)

        print(f"\nconnect -> channel -> publish -> close, {a.cycles} cycles per cell, "
              f"link RTT {rtt:.0f} ms, seconds per cycle\n")
        print(f"| client | direct, {rtt:.0f} ms | warren, {rtt:.0f} ms | warren, 0 ms | direct / warren "
              f"| {rtt:.0f} ms - 0 ms through warren |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for client, direct, slow, fast in rows:
            print(f"| {client} | {direct:.4f} | {slow:.4f} | {fast:.4f} | {direct / slow:.0f}x "
                  f"| {(slow - fast) * 1000:+.2f} ms |")
        print(f"\nmessages: {count} of {published} published arrived")
        if count != published:
            sys.exit("message count mismatch")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
