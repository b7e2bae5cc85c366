#!/usr/bin/env node
// Submits tasks to Tarefa from Node.js and waits for their results, straight from the proto
// contract (no generated code, no build step).
//
//   cd examples/node && npm ci
//   node producer.js 127.0.0.1:50051   # the scheduler's gRPC address (the default)
//
// `fib` runs in the Rust executor's demo handlers; `word_count_js` in handler.js (route it with
// `tarefa-executor --handler word_count_js=grpc://127.0.0.1:50062`). Prints one JSON object:
// {"fib": {"task_id", "state", "result"}, "word_count_js": {...}}; exits 1 unless both succeed.
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO = process.env.TAREFA_PROTO || path.join(__dirname, '../../proto/tarefa/v1/tarefa.proto');
const definition = protoLoader.loadSync(PROTO, { keepCase: true, longs: Number, enums: String, defaults: true });
const tarefa = grpc.loadPackageDefinition(definition).tarefa.v1;

const FINAL = new Set(['TASK_STATE_SUCCEEDED', 'TASK_STATE_DEAD', 'TASK_STATE_CANCELLED']);
const WAIT_MS = 120_000;

// TAREFA_TOKEN, when set, goes with every call as `authorization: Bearer <token>` (call
// metadata, so it works on plain and TLS channels alike); TAREFA_CA_CERT (a PEM file)
// switches to TLS, trusting that CA.
const metadata = new grpc.Metadata();
if (process.env.TAREFA_TOKEN) metadata.add('authorization', `Bearer ${process.env.TAREFA_TOKEN}`);
const credentials = process.env.TAREFA_CA_CERT
  ? grpc.credentials.createSsl(require('fs').readFileSync(process.env.TAREFA_CA_CERT))
  : grpc.credentials.createInsecure();
const scheduler = new tarefa.Scheduler(process.argv[2] || '127.0.0.1:50051', credentials);

// SubmitTask with a JSON payload; resolves to the task id.
function submit(task_type, args) {
  const request = { task_type, payload: Buffer.from(JSON.stringify(args)), content_type: 'application/json' };
  return new Promise((resolve, reject) => {
    scheduler.SubmitTask(request, metadata, { deadline: Date.now() + 30_000 }, (error, response) =>
      error ? reject(error) : resolve(response.task_id),
    );
  });
}

// WatchTask streams the task now and on every change, and ends after a final state.
async function wait(task_id) {
  let task;
  for await (const update of scheduler.WatchTask({ task_id }, metadata, { deadline: Date.now() + WAIT_MS })) task = update;
  if (!task || !FINAL.has(task.state)) throw new Error(`WatchTask(${task_id}) ended before a final state`);
  const succeeded = task.state === 'TASK_STATE_SUCCEEDED';
  return {
    task_id,
    state: task.state.replace('TASK_STATE_', ''),
    result: succeeded ? JSON.parse(task.result.toString('utf8')) : null,
    ...(succeeded ? {} : { error: task.last_error }),
  };
}

async function main() {
  const fib = await submit('fib', { n: 90 });
  const words = await submit('word_count_js', { text: 'the quick brown fox jumps over the lazy dog the end' });
  const out = { fib: await wait(fib), word_count_js: await wait(words) };
  console.log(JSON.stringify(out));
  return Object.values(out).every((task) => task.state === 'SUCCEEDED') ? 0 : 1;
}

main()
  .then((code) => {
    scheduler.close();
    process.exitCode = code;
  })
  .catch((error) => {
    console.error(error.message || error);
    process.exit(1);
  });
