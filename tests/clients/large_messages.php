<?php
// large_messages.php URL SIZE COUNT QUEUE [--lib=amqplib|ext]
//
// Publishes COUNT messages of SIZE bytes to QUEUE (default exchange), then
// consumes them with no prefetch limit and checks each body byte for byte.
//   --lib=amqplib (default): php-amqplib; --lib=ext: the php-amqp extension.
// Prints "RESULT ok".

$positional = [];
$lib = 'amqplib';
foreach (array_slice($argv, 1) as $arg) {
    if (preg_match('/^--lib=(amqplib|ext)$/', $arg, $m)) {
        $lib = $m[1];
    } else {
        $positional[] = $arg;
    }
}
[$url, $size, $count, $queue] = $positional;
$size = (int)$size;
$count = (int)$count;
$u = parse_url($url);
$vhost = isset($u['path']) && strlen($u['path']) > 1 ? urldecode(substr($u['path'], 1)) : '/';
$pattern = implode('', array_map('chr', range(0, 250)));
$base = str_repeat($pattern, intdiv($size, 251) + 2);
$body = fn(int $i): string => substr($base, $i % 251, $size);
$fail = function (string $why): void {
    fwrite(STDERR, "$why\n");
    exit(1);
};

$received = 0;
if ($lib === 'amqplib') {
    require_once '/usr/share/php/PhpAmqpLib/autoload.php';
    $conn = new PhpAmqpLib\Connection\AMQPStreamConnection($u['host'], $u['port'], urldecode($u['user']),
        urldecode($u['pass']), $vhost, false, 'AMQPLAIN', null, 'en_US', 10.0, 120.0);
    $ch = $conn->channel();
    $ch->confirm_select();
    for ($i = 0; $i < $count; $i++) {
        $ch->basic_publish(new PhpAmqpLib\Message\AMQPMessage($body($i)), '', $queue);
    }
    $ch->wait_for_pending_acks(120);
    $ch->basic_consume($queue, '', false, true, false, false,
        function ($msg) use (&$received, $body, $size, $fail) {
            if ($msg->getBody() !== $body($received)) {
                $fail("message $received: " . strlen($msg->getBody()) . " bytes, not the $size published");
            }
            $received++;
        });
    while ($received < $count) {
        $ch->wait(null, false, 120);
    }
    $ch->close();
    $conn->close();
} else {
    $conn = new AMQPConnection(['host' => $u['host'], 'port' => $u['port'], 'login' => urldecode($u['user']),
        'password' => urldecode($u['pass']), 'vhost' => $vhost, 'read_timeout' => 120]);
    $conn->connect();
    $ch = new AMQPChannel($conn);
    $exchange = new AMQPExchange($ch);
    for ($i = 0; $i < $count; $i++) {
        $exchange->publish($body($i), $queue);
    }
    $q = new AMQPQueue($ch);
    $q->setName($queue);
    $q->consume(function ($envelope) use (&$received, $body, $size, $count, $fail) {
        if ($envelope->getBody() !== $body($received)) {
            $fail("message $received: " . strlen($envelope->getBody()) . " bytes, not the $size published");
        }
        $received++;
        return $received < $count;
    }, AMQP_AUTOACK);
    $conn->disconnect();
}
echo "RESULT ok\n";
