#!/usr/bin/env node
// publish_cycles.js URL N QUEUE TAG [--confirm]
//
// N times: connect -> channel.open -> publish "TAG:i" to QUEUE via the default
// exchange -> channel.close -> connection.close, with amqplib's promise API.
// The queue must exist. Prints "RESULT client=amqplib n=N seconds=S per_cycle=S".
'use strict';
const amqp = require('amqplib');

async function main() {
  const args = process.argv.slice(2).filter((a) => !a.startsWith('--'));
  const confirm = process.argv.includes('--confirm');
  const [url, n, queue, tag] = [args[0], Number(args[1]), args[2], args[3]];
  const start = process.hrtime.bigint();
  for (let i = 0; i < n; i++) {
    const conn = await amqp.connect(url);
    const ch = confirm ? await conn.createConfirmChannel() : await conn.createChannel();
    ch.sendToQueue(queue, Buffer.from(`${tag}:${i}`), { persistent: true });
    if (confirm) await ch.waitForConfirms();
    await ch.close();
    await conn.close();
  }
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  console.log(`RESULT client=amqplib n=${n} seconds=${seconds.toFixed(4)} per_cycle=${(seconds / n).toFixed(5)}`);
}

main().catch((err) => {
  console.error(`amqplib client failed: ${err.stack || err}`);
  process.exit(1);
});
