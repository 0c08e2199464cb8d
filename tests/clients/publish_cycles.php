<?php
// publish_cycles.php URL N QUEUE TAG [--lib=amqplib|ext] [--confirm]
//
// N times: connect -> channel.open -> publish "TAG:i" to QUEUE via the default
// exchange -> channel.close -> connection.close.
//   --lib=amqplib (default): php-amqplib (pure PHP, logs in with AMQPLAIN)
//   --lib=ext:               the php-amqp C extension (librabbitmq)
// The queue must exist. Prints "RESULT client=php-amqplib|php-amqp n=N seconds=S per_cycle=S".

$positional = [];
$lib = 'amqplib';
$confirm = false;
foreach (array_slice($argv, 1) as $arg) {
    if (preg_match('/^--lib=(amqplib|ext)$/', $arg, $m)) {
        $lib = $m[1];
    } elseif ($arg === '--confirm') {
        $confirm = true;
    } else {
        $positional[] = $arg;
    }
}
if (count($positional) !== 4) {
    fwrite(STDERR, "usage: php publish_cycles.php URL N QUEUE TAG [--lib=amqplib|ext] [--confirm]\n");
    exit(2);
}
[$url, $n, $queue, $tag] = $positional;
$n = (int)$n;
$u = parse_url($url);
$host = $u['host'];
$port = $u['port'] ?? 5672;
$user = urldecode($u['user'] ?? 'guest');
$pass = urldecode($u['pass'] ?? 'guest');
$vhost = isset($u['path']) && strlen($u['path']) > 1 ? urldecode(substr($u['path'], 1)) : '/';

$start = microtime(true);
if ($lib === 'amqplib') {
    require_once '/usr/share/php/PhpAmqpLib/autoload.php';
    for ($i = 0; $i < $n; $i++) {
        $conn = new PhpAmqpLib\Connection\AMQPStreamConnection($host, $port, $user, $pass, $vhost);
        $ch = $conn->channel();
        if ($confirm) {
            $ch->confirm_select();
        }
        $msg = new PhpAmqpLib\Message\AMQPMessage("$tag:$i", ['delivery_mode' => 2]);
        $ch->basic_publish($msg, '', $queue);
        if ($confirm) {
            $ch->wait_for_pending_acks(5.0);
        }
        $ch->close();
        $conn->close();
    }
    $name = 'php-amqplib';
} else {
    for ($i = 0; $i < $n; $i++) {
        $conn = new AMQPConnection(['host' => $host, 'port' => $port, 'login' => $user,
                                    'password' => $pass, 'vhost' => $vhost]);
        $conn->connect();
        $ch = new AMQPChannel($conn);
        if ($confirm) {
            $ch->confirmSelect();
            $ch->setConfirmCallback(function () { return false; }, function () { return false; });
        }
        $ex = new AMQPExchange($ch);
        $ex->publish("$tag:$i", $queue, AMQP_NOPARAM, ['delivery_mode' => 2]);
        if ($confirm) {
            $ch->waitForConfirm(5.0);
        }
        $ch->close();
        $conn->disconnect();
    }
    $name = 'php-amqp';
}
$seconds = microtime(true) - $start;
printf("RESULT client=%s n=%d seconds=%.4f per_cycle=%.5f\n", $name, $n, $seconds, $seconds / $n);
