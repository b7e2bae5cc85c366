"""Redis's own work per task, in instructions, for the scripts of this version and for a
prototype of a stream-native fast path. Instruction counts do not vary with a noisy machine,
so this is how BENCHMARKS.md compares data layouts.

    python3 -m venv /tmp/rc && /tmp/rc/bin/pip install redis
    /tmp/rc/bin/python docs/experiments/redis_cost.py current --batch 8
    /tmp/rc/bin/python docs/experiments/redis_cost.py fast-path --batch 8

Each run starts its own redis-server (AOF everysec, as `tarefa dev`) on a free port under
`valgrind --tool=callgrind`, submits tasks in batches of 100, reads, claims and completes them
in batches of `--batch`, and prints the instructions per task. `current` drives the real
scripts in queue/scripts; `fast-path` is a sketch, not Tarefa: the task's spec travels in the
stream entry, the claim is the XREADGROUP itself (the pending list is the lease, its delivery
count the attempt), and only the outcome writes a record, after a fence check on the pending
list.
"""

import argparse
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time

import redis

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(ROOT, "queue", "scripts")
PREFIX = "tarefa:{q}:"
SPEC = (b"\x01\x04noop\x10application/json\x00\x00"
        b"\x3700-0123456789abcdef0123456789abcdef-0123456789abcdef-01\x02{}")
DAY_MS = 86_400_000

FAST_PRELUDE = """
local base = KEYS[1]
local STREAM = base .. 'stream'
local GROUP = 'executors'
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""
FAST_SUBMIT = FAST_PRELUDE + """
local out = {}
for i = 1, #ARGV, 3 do
  out[#out + 1] = redis.call('XADD', STREAM, '*', 's', ARGV[i], 'm', ARGV[i + 1], 't', ARGV[i + 2])
end
redis.call('HINCRBY', base .. 'stats', 'submitted', #out)
return out
"""
FAST_COMPLETE = FAST_PRELUDE + """
local executor, now_s = ARGV[1], tostring(now_ms())
local out, acked, done = {}, {}, {}
for i = 2, #ARGV, 3 do
  local entry, ttl, body = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local p = redis.call('XPENDING', STREAM, GROUP, entry, entry, 1, executor)
  if #p == 1 then
    local key = base .. 'r:' .. entry
    redis.call('HSET', key, 'state', '4', 'res', body, 'ftime', now_s, 'att', p[1][4])
    redis.call('PEXPIRE', key, ttl)
    acked[#acked + 1] = entry
    done[#done + 1] = now_s
    done[#done + 1] = entry
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if #acked > 0 then
  redis.call('XACK', STREAM, GROUP, unpack(acked))
  redis.call('ZADD', base .. 'done', unpack(done))
  redis.call('HINCRBY', base .. 'stats', 'succeeded', #acked)
  local pending = redis.call('XPENDING', STREAM, GROUP, '-', '+', 1)
  if #pending > 0 then redis.call('XTRIM', STREAM, 'MINID', '~', pending[1][1]) end
  redis.call('PUBLISH', base .. 'events', table.concat(acked, ' '))
end
return out
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def function_library(r):
    """Loads the scripts as queue/src/scripts.rs does: one library, common.lua then one
    function per script, which binds the queue's keys first. Returns a caller by name."""
    with open(os.path.join(SCRIPTS, "common.lua")) as common:
        source = "#!lua name=tarefa_cost\n" + common.read() + "\n"
    for name in ("claim", "complete"):
        with open(os.path.join(SCRIPTS, name + ".lua")) as body:
            source += (f"redis.register_function{{function_name = 'tarefa_cost_{name}', "
                       "flags = {'allow-oom'}, callback = function(KEYS, ARGV)\nbind(KEYS)\n"
                       + body.read() + "\nend}\n")
    r.execute_command("FUNCTION", "LOAD", source)

    def call(name):
        return lambda keys, args: r.execute_command(
            "FCALL", f"tarefa_cost_{name}", len(keys), *keys, *args)
    return call


RESULT = b"null"


def length(n):
    """A LEB128 length, as spec.rs writes it."""
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def finished(executor, fence, started, max_attempts, ttl, result):
    """What the executor packs for a finished bucket (record.rs, Finished::pack)."""
    out = b"1"
    # SPEC's six fields take all of it (its payload is empty): the head, then no payload.
    for field in (executor, fence, started, max_attempts, ttl, "", "", SPEC, b""):
        field = field if isinstance(field, bytes) else str(field).encode()
        out += length(len(field)) + field
    return out + length(len(result))


def run_current(r, tasks, batch):
    function = function_library(r)
    claim, complete = function("claim"), function("complete")
    done = untrimmed = 0
    while done < tasks:
        # Tasks due now without an idempotency key go in as plain XADDs, pipelined (the
        # queue crate's submit_plain, in MULTI/EXEC); submit.lua writes the others.
        pipe = r.pipeline(transaction=True)
        for i in range(100):
            pipe.xadd(PREFIX + "stream", {"s": SPEC, "max": 3, "ttl": DAY_MS})
        pipe.hincrby(PREFIX + "stats", "submitted", 100)
        pipe.execute()
        for _ in range(0, 100, batch):
            entries = r.xreadgroup("executors", "e1", {PREFIX + "stream": ">"}, count=batch)[0][1]
            # Birth entries (no `id` field: the entry names its task) first, then the others
            # as (entry, task) pairs; here every entry is a birth entry.
            births = [entry for entry, fields in entries if b"id" not in fields]
            # Then the birth seconds: the finished buckets their tasks would be in.
            seconds = sorted({int(e.split(b"-")[0]) // 1000 for e in births})
            claim_args = ["e1", 3, 7 * DAY_MS, len(births)] + births + [len(seconds)] + seconds
            _paused, rows, births_claimed, now = claim(keys=[PREFIX], args=claim_args)
            assert births_claimed == 1 and not rows
            # The executor's own arithmetic (queue/src/consumer.rs, birth_fence).
            fences = [int(e.split(b"-")[0]) * 1000 + min(int(e.split(b"-")[1]), 999)
                      for e in births]
            # The executor asks for a trim of the stream every 64 outcomes (consumer.rs,
            # TRIM_EVERY).
            untrimmed += len(births)
            trim = 1 if untrimmed >= 64 else 0
            if trim:
                untrimmed = 0
            outcome_args = [7 * DAY_MS, "e1", births[0], births[-1], trim]
            for entry, fence in zip(births, fences):
                # id, fencing token, the packed finished record (queue/src/record.rs,
                # Finished::pack), birth second, result ttl, outcome
                packed = finished("e1", fence, now, 3, DAY_MS, RESULT)
                outcome_args += [entry, fence, packed, int(entry.split(b"-")[0]) // 1000,
                                 DAY_MS, "ok", RESULT, 0]
            assert complete(keys=[PREFIX], args=outcome_args) == b"1" * len(births)
        done += 100


def run_fast_path(r, tasks, batch):
    submit, complete = r.register_script(FAST_SUBMIT), r.register_script(FAST_COMPLETE)
    done = 0
    while done < tasks:
        submit(keys=[PREFIX], args=[SPEC, 3, DAY_MS] * 100)
        for _ in range(0, 100, batch):
            entries = r.xreadgroup("executors", "e1", {PREFIX + "stream": ">"}, count=batch)[0][1]
            args = ["e1"]
            for entry, _fields in entries:
                args += [entry, DAY_MS, "null"]
            assert all(x == 1 for x in complete(keys=[PREFIX], args=args))
        done += 100


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("layout", choices=["current", "fast-path"])
    parser.add_argument("--tasks", type=int, default=5000, help="a multiple of 100")
    parser.add_argument("--batch", type=int, default=8, help="read/claim/complete batch")
    args = parser.parse_args()
    for tool in ("redis-server", "valgrind", "callgrind_annotate"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install redis-server valgrind")
    work = tempfile.mkdtemp(prefix="redis-cost-")
    profile = os.path.join(work, "callgrind.out")
    port = free_port()
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={profile}", "redis-server",
         "--port", str(port), "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
         "--dir", work],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = redis.Redis(port=port)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        r.xgroup_create(PREFIX + "stream", "executors", "0", mkstream=True)
        (run_current if args.layout == "current" else run_fast_path)(r, args.tasks, args.batch)
    finally:
        server.terminate()
        server.wait()
    totals = subprocess.run(["callgrind_annotate", profile], capture_output=True, text=True).stdout
    match = re.search(r"([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", totals)
    if not match:
        raise SystemExit("no callgrind totals: " + totals[:500])
    instructions = int(match.group(1).replace(",", ""))
    print(f"{args.layout}: {instructions / args.tasks / 1000:.0f} k instructions per task "
          f"(batch {args.batch}, {args.tasks} tasks, including Redis's start and stop)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
