#!/usr/bin/env node
// A Tarefa task handler in Node.js: serves tarefa.v1.TaskHandler/Execute for `word_count_js`,
// straight from the proto contract (no generated code, no build step).
//
//   cd examples/node && npm ci
//   node handler.js 50062            # PORT [HOST], HOST defaults to 127.0.0.1 (0.0.0.0 in a container)
//   tarefa-executor --handler word_count_js=grpc://127.0.0.1:50062
//
// Then submit `word_count_js` tasks from any language (see producer.js). The payload is JSON
// {"text": "..."}; the result is JSON {"words": 9, "top": [["the", 3], ...], "attempt": 1,
// "traceparent": "00-..."}. A payload without `text` fails the task permanently (DEAD).
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO = process.env.TAREFA_PROTO || path.join(__dirname, '../../proto/tarefa/v1/tarefa.proto');
const definition = protoLoader.loadSync(PROTO, { keepCase: true, longs: Number, enums: String, defaults: true });
const tarefa = grpc.loadPackageDefinition(definition).tarefa.v1;

const OUTCOME = { SUCCESS: 'EXECUTE_OUTCOME_SUCCESS', FAIL: 'EXECUTE_OUTCOME_FAIL' };

// {"text": "..."} -> {"words": 9, "top": [["the", 3], ...]}, most common first.
function wordCount(text, top = 3) {
  const words = text.toLowerCase().match(/[\p{L}\p{N}_']+/gu) || [];
  const counts = new Map(); // keeps first-seen order, so ties stay in text order
  for (const word of words) counts.set(word, (counts.get(word) || 0) + 1);
  const ranked = [...counts].sort((a, b) => b[1] - a[1]).slice(0, top);
  return { words: words.length, top: ranked };
}

function execute(call, callback) {
  const { task_id, attempt, payload } = call.request;
  let args;
  try {
    args = JSON.parse(payload.toString('utf8'));
  } catch {
    args = undefined;
  }
  if (!args || typeof args.text !== 'string') {
    // Retrying cannot fix a bad payload: fail permanently, the task goes DEAD.
    callback(null, { outcome: OUTCOME.FAIL, error: 'expected {"text": "..."}' });
    return;
  }
  // The executor's attempt span: the W3C trace context of the task's trace.
  const [traceparent = ''] = call.metadata.get('traceparent');
  const result = { ...wordCount(args.text), attempt, traceparent: String(traceparent) };
  console.log(`task ${task_id} attempt ${attempt}: ${result.words} words`);
  callback(null, { outcome: OUTCOME.SUCCESS, result: Buffer.from(JSON.stringify(result)) });
}

const port = Number(process.argv[2] || 50062);
const host = process.argv[3] || '127.0.0.1';
const server = new grpc.Server();
server.addService(tarefa.TaskHandler.service, { Execute: execute });
server.bindAsync(`${host}:${port}`, grpc.ServerCredentials.createInsecure(), (error, bound) => {
  if (error) {
    console.error(`cannot listen on ${host}:${port}: ${error.message}`);
    process.exit(1);
  }
  console.log(`word_count_js handler listening on ${host}:${bound}`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => server.tryShutdown(() => process.exit(0)));
}
