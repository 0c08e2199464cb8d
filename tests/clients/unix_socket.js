#!/usr/bin/env node
// unix_socket.js SOCKET_PATH QUEUE
//
// Connects to an AMQP server on a Unix socket with amqplib (Node's net
// module connects to `path` when socket options carry one), publishes a
// message to QUEUE (declared, exclusive), reads it back with basic.get and
// prints "RESULT body=<body>".
'use strict';
const amqp = require('amqplib');

async function main() {
  const [path, queue] = process.argv.slice(2);
  const conn = await amqp.connect('amqp://guest:guest@localhost/%2F', { path });
  const ch = await conn.createChannel();
  await ch.assertQueue(queue, { exclusive: true });
  ch.sendToQueue(queue, Buffer.from('over a unix socket'));
  let got = false;
  for (let i = 0; i < 100 && !got; i++) {
    got = await ch.get(queue, { noAck: true });
  }
  if (!got) throw new Error('the message did not arrive');
  console.log(`RESULT body=${got.content.toString()}`);
  await ch.close();
  await conn.close();
}

main().catch((err) => {
  console.error(`amqplib client failed: ${err.stack || err}`);
  process.exit(1);
});
