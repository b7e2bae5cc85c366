"""What an XADD costs its caller when a consumer is blocked on the stream, with no Tarefa code
involved: the effect behind `tarefa bench`'s two submit probes (`submit_served_queue_p50`
against `submit_unserved_queue_p50`, BENCHMARKS.md, "Performance II, second step").

    python3 -m venv /tmp/rc && /tmp/rc/bin/pip install redis
    /tmp/rc/bin/python docs/experiments/blocked_reader.py            # any cores
    taskset -c 0 /tmp/rc/bin/python docs/experiments/blocked_reader.py   # one core for all

It starts its own redis-server (AOF everysec, as `tarefa dev`) on a free port and one reader
process that waits in `XREADGROUP ... BLOCK` on stream `served` and acknowledges what it gets,
as an idle executor does. The caller then alternates, 2 ms apart, an XADD to `served` and an
XADD to `unserved` (a stream nobody reads) and prints both medians. Redis serves the blocked
read in the same event-loop turn as the XADD, and the reader process is woken beside the
caller: on a small machine that wake-up is what the caller waits for.
"""

import multiprocessing
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

import redis

ROUNDS = 400


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reader(port):
    con = redis.Redis(port=port)
    while True:
        got = con.xreadgroup("g", "c1", {"served": ">"}, count=10, block=1000)
        if got:
            con.xack("served", "g", *[entry for entry, _fields in got[0][1]])


def main():
    if not shutil.which("redis-server"):
        raise SystemExit("redis-server is missing: apt-get install redis-server")
    work = tempfile.mkdtemp(prefix="blocked-reader-")
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "yes",
         "--appendfsync", "everysec", "--dir", work],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    process = None
    try:
        con = redis.Redis(port=port)
        for _ in range(100):
            try:
                con.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        con.xgroup_create("served", "g", "0", mkstream=True)
        process = multiprocessing.Process(target=reader, args=(port,), daemon=True)
        process.start()
        # Wait until the reader is blocked on the stream (it shows as a blocked client).
        for _ in range(200):
            if int(con.info("clients")["blocked_clients"]) >= 1:
                break
            time.sleep(0.01)
        micros = {"unserved": [], "served": []}
        for _ in range(ROUNDS):
            for stream in ("unserved", "served"):
                started = time.perf_counter()
                con.xadd(stream, {"s": "x" * 80})
                micros[stream].append((time.perf_counter() - started) * 1e6)
                time.sleep(0.002)
        for stream, values in micros.items():
            print(f"XADD to the {stream} stream: p50 {statistics.median(values):.0f} µs")
    finally:
        if process is not None:
            process.terminate()
            process.join()
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
