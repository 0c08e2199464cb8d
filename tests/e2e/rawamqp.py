"""A minimal AMQP 0-9-1 client over a raw socket, for tests that need to
see or send exact frames (handshake order, frame_max, silence). Real client
libraries cover everything else."""
import socket
import struct

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"


def shortstr(s):
    b = s.encode()
    return struct.pack("!B", len(b)) + b


def longstr(b):
    return struct.pack("!I", len(b)) + b


def table(entries):
    """entries: dict of str -> bool | bytes | dict"""
    out = b""
    for k, v in entries.items():
        out += shortstr(k)
        if isinstance(v, bool):
            out += b"t" + struct.pack("!B", v)
        elif isinstance(v, dict):
            out += b"F" + table(v)
        else:
            out += b"S" + longstr(v)
    return longstr(out)


def frame(kind, channel, payload):
    return struct.pack("!BHI", kind, channel, len(payload)) + payload + b"\xce"


def method(channel, class_id, method_id, args=b""):
    return frame(FRAME_METHOD, channel, struct.pack("!HH", class_id, method_id) + args)


class Frame:
    def __init__(self, kind, channel, payload):
        self.kind, self.channel, self.payload = kind, channel, payload

    @property
    def method(self):
        if self.kind != FRAME_METHOD:
            return None
        return struct.unpack("!HH", self.payload[:4])

    def close_reply(self):
        """(code, text) of a Connection.Close or Channel.Close."""
        code, n = struct.unpack("!HB", self.payload[4:7])
        return code, self.payload[7:7 + n].decode()

    def __repr__(self):
        return f"Frame(kind={self.kind}, channel={self.channel}, method={self.method}, size={len(self.payload)})"


class RawClient:
    def __init__(self, port=None, timeout=10, unix=None):
        """Connects to 127.0.0.1:port, or to the Unix socket at `unix`."""
        if unix:
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.settimeout(timeout)
            self.sock.connect(unix)
        else:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk

    def read_exact(self, n):
        self._fill(n)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self):
        kind, channel, size = struct.unpack("!BHI", self.read_exact(7))
        payload = self.read_exact(size + 1)
        assert payload[-1] == 0xCE, "bad frame end"
        return Frame(kind, channel, payload[:-1])

    def read_method(self):
        """Next method frame, skipping heartbeats."""
        while True:
            f = self.read_frame()
            if f.kind != FRAME_HEARTBEAT:
                return f

    def login(self, user="guest", password="guest", capabilities=None):
        """Sends the protocol header and Start-Ok; returns the server's next
        method frame (Tune, or Close when the login is refused)."""
        self.send(PROTOCOL_HEADER)
        start = self.read_method()
        assert start.method == (10, 10), start
        caps = {"authentication_failure_close": True} if capabilities is None else capabilities
        props = table({"product": b"rawamqp", "capabilities": caps})
        response = b"\0" + user.encode() + b"\0" + password.encode()
        self.send(method(0, 10, 11, props + shortstr("PLAIN") + longstr(response) + shortstr("en_US")))
        return self.read_method()

    def handshake(self, user="guest", password="guest", vhost="/", channel_max=2047,
                  frame_max=131072, heartbeat=0, capabilities=None):
        """Runs the handshake up to (not including) the answer to Connection.Open;
        returns the server's Tune arguments."""
        tune = self.login(user, password, capabilities)
        assert tune.method == (10, 30), tune
        offered = struct.unpack("!HIH", tune.payload[4:12])
        self.send(method(0, 10, 31, struct.pack("!HIH", channel_max, frame_max, heartbeat)))
        self.send(method(0, 10, 40, shortstr(vhost) + shortstr("") + b"\0"))
        return offered

    def open(self, **kw):
        """Handshake plus Open-Ok."""
        offered = self.handshake(**kw)
        ok = self.read_method()
        assert ok.method == (10, 41), (ok, ok.close_reply() if ok.method == (10, 50) else None)
        return offered

    def close(self):
        self.sock.close()


def publish_frames(channel, routing_key, body, exchange="", mandatory=False):
    """Basic.Publish + content header + one body frame."""
    return (method(channel, 60, 40, struct.pack("!H", 0) + shortstr(exchange) + shortstr(routing_key)
                   + struct.pack("!B", 1 if mandatory else 0))
            + frame(FRAME_HEADER, channel, struct.pack("!HHQH", 60, 0, len(body), 0))
            + frame(FRAME_BODY, channel, body))


def queue_declare(channel, name, passive=False, exclusive=False):
    bits = (1 if passive else 0) | (4 if exclusive else 0)
    return method(channel, 50, 10, struct.pack("!H", 0) + shortstr(name) + struct.pack("!B", bits)
                  + struct.pack("!I", 0))


def ack_of(f):
    """(delivery_tag, multiple) of a Basic.Ack frame."""
    tag, bits = struct.unpack("!QB", f.payload[4:13])
    return tag, bool(bits & 1)


class Channel:
    """Helpers for one channel of a RawClient."""

    def __init__(self, client, number):
        self.client, self.number = client, number

    def open(self):
        self.client.send(method(self.number, 20, 10, shortstr("")))
        reply = self.client.read_method()
        assert reply.method == (20, 11), reply
        return self

    def confirm_select(self):
        self.client.send(method(self.number, 85, 10, b"\x00"))
        reply = self.client.read_method()
        assert reply.method == (85, 11), reply

    def publish(self, routing_key, body, **kw):
        self.client.send(publish_frames(self.number, routing_key, body, **kw))

    def declare_passive(self, name):
        """Sends a passive Queue.Declare and returns every frame up to and
        including its reply."""
        self.client.send(queue_declare(self.number, name, passive=True))
        seen = []
        while True:
            f = self.client.read_method()
            seen.append(f)
            if f.method in ((50, 11), (20, 40)):
                return seen

    def close(self):
        self.client.send(method(self.number, 20, 40, struct.pack("!H", 200) + shortstr("bye")
                                + struct.pack("!HH", 0, 0)))
        while True:
            f = self.client.read_method()
            if f.method == (20, 41):
                return
