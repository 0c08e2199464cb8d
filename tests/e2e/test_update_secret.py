"""Connection.Update-Secret (RabbitMQ's extension for refreshed OAuth 2
tokens and rotated passwords): the client hears what it hears directly,
its open channels go on, and the shared upstream connection is not asked
(a connection of the client's own is opened for the question)."""
import pika

from conftest import params


def update_and_use(port, secret):
    """What a client observes: the update's outcome, then whether its
    channel still works."""
    conn = pika.BlockingConnection(params(port))
    channel = conn.channel()
    try:
        conn.update_secret(secret, "rotation")
        outcome = "ok"
    except Exception as e:  # noqa: BLE001 - compared between the two runs
        outcome = type(e).__name__
    works = False
    if conn.is_open:
        channel.queue_declare("", exclusive=True)
        works = True
        conn.close()
    return outcome, works


def test_update_secret_behaves_as_directly(broker, warren):
    for secret in ("guest", "not-the-password"):
        direct = update_and_use(broker.port, secret)
        through = update_and_use(warren.port, secret)
        assert through == direct, (secret, direct, through)
    assert "client updated its secret" in warren.log_text()
    assert "not-the-password" not in warren.log_text()


def test_the_shared_connection_and_its_other_clients_are_untouched(broker, warren):
    with warren.connect() as bystander, warren.connect() as updating:
        bystander_channel = bystander.channel()
        updating.channel()
        shared = broker.warren_connections()
        updating.update_secret("guest", "rotation")
        # The question went over a connection of its own, closed since.
        assert broker.warren_connections() == shared
        bystander_channel.queue_declare("", exclusive=True)
        updating.channel().queue_declare("", exclusive=True)


def test_amqplib_update_secret_behaves_as_directly(broker, warren):
    import subprocess
    from conftest import CLIENTS, amqp_url

    def run(port, secret):
        out = subprocess.run(["node", str(CLIENTS / "update_secret.js"), amqp_url(port), secret],
                             capture_output=True, text=True, timeout=60, cwd=CLIENTS)
        assert out.returncode == 0, out.stderr
        return [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]

    for secret in ("guest", "not-the-password"):
        direct = run(broker.port, secret)
        assert direct, "the direct run printed its result"
        assert run(warren.port, secret) == direct, secret
