#!/usr/bin/env node
// update_secret.js URL SECRET
//
// Connects with amqplib, opens a channel, updates the connection's secret to
// SECRET (Connection.Update-Secret), then declares a server-named queue on
// the channel opened before. Prints "RESULT update=<ok|error name> channel=<works|closed>",
// what the test compares between a direct connection and one through warren.
'use strict';
const amqp = require('amqplib');

async function main() {
  const [url, secret] = process.argv.slice(2);
  const conn = await amqp.connect(url);
  conn.on('error', () => {});
  const ch = await conn.createChannel();
  ch.on('error', () => {});
  let update = 'ok';
  try {
    await conn.updateSecret(Buffer.from(secret), 'rotation');
  } catch (err) {
    update = `error:${err.code || err.name}`;
  }
  let channel = 'works';
  try {
    await ch.assertQueue('', { exclusive: true });
  } catch (err) {
    channel = 'closed';
  }
  console.log(`RESULT update=${update} channel=${channel}`);
  try {
    await conn.close();
  } catch (err) {
    // Already closed by the broker: what the RESULT line says.
  }
}

main().catch((err) => {
  console.error(`amqplib client failed: ${err.stack || err}`);
  process.exit(1);
});
