#!/usr/bin/env node
// large_messages.js URL SIZE COUNT QUEUE
//
// Publishes COUNT messages of SIZE bytes to QUEUE (default exchange, with
// confirms), then consumes them with no prefetch limit and checks each body
// byte for byte, with amqplib. Prints "RESULT ok".
'use strict';
const amqp = require('amqplib');

function body(size, index) {
  const out = Buffer.allocUnsafe(size);
  for (let i = 0; i < size; i++) out[i] = (i + index) % 251;
  return out;
}

async function main() {
  const [url, size, count, queue] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4]), process.argv[5]];
  const conn = await amqp.connect(url);
  const ch = await conn.createConfirmChannel();
  for (let i = 0; i < count; i++) ch.sendToQueue(queue, body(size, i));
  await ch.waitForConfirms();
  let received = 0;
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${received} of ${count} messages`)), 120000);
    conn.on('close', () => reject(new Error(`connection closed after ${received} of ${count} messages`)));
    ch.consume(queue, (msg) => {
      if (!msg.content.equals(body(size, received))) {
        reject(new Error(`message ${received}: ${msg.content.length} bytes, not the ${size} published`));
      }
      received += 1;
      if (received === count) { clearTimeout(timer); resolve(); }
    }, { noAck: true });
  });
  await conn.close();
  console.log('RESULT ok');
}

main().catch((err) => {
  console.error(`amqplib client failed: ${err.stack || err}`);
  process.exit(1);
});
