"""The Python producer path against its floors: what one `tarefa` client thread costs per task.

    cargo build --release -p tarefa-scheduler -p tarefa-executor -p tarefa
    python3 -m venv /tmp/pp && /tmp/pp/bin/pip install ./clients/python redis
    /tmp/pp/bin/python docs/experiments/python_producer.py --rounds 5
    /tmp/pp/bin/python docs/experiments/python_producer.py --scheduler 127.0.0.1:50051 \\
        --redis-url redis://127.0.0.1:6379          # a scheduler and Redis of yours

Without `--scheduler`, it starts a private `redis-server` (AOF everysec, as `tarefa dev`) on a
free port and `target/release/tarefa-scheduler` (`--bin-dir`) on free ports, and stops both
at the end. No executor runs unless `--executors N`: a submit's cost does not depend on one.

Each round runs in a fresh Python process (the package under test is imported from
`--package`, default `clients/python`; `--baseline-package DIR` alternates another copy, e.g.
the previous version's, round by round) and measures, one after the other on one connection:

- `floor_rpc`: a `GetTask` with an invalid id, refused INVALID_ARGUMENT by the scheduler's
  validation without touching Redis, through the raw generated stub: grpcio's floor;
- `redis_rtt`: a `PING` over a raw socket to the same Redis (`redis_py` through redis-py);
- `submit`: `client.submit("noop", {"i": i})`, one at a time (p50, mean), and `raw_submit`:
  the raw stub's `SubmitTask` with a prebuilt request (what the package cannot go below);
- `submit_many`: `client.submit_many` of `--batch` requests built in the loop, tasks/s;
- `nowait`: `client.submit_nowait`, keeping `--window` submits in flight (waiting on the
  oldest), tasks/s; since the package coalesces these into `SubmitTasks` calls,
  `--client-options '{"submit_linger": 0}'` passes keyword arguments to that client (a package
  whose `Client` does not take them, e.g. the baseline, is measured with its defaults);

with the CPU time per task of the Python process, the scheduler and Redis during the last two
(when it started them),
and reports medians over rounds, and the ratio `submit p50 / (floor_rpc p50 + redis_rtt p50)`,
each ratio taken within a round. `--profile` prints cProfile's view of the blocking and the
non-blocking loops instead. `--json` prints one JSON object.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, process, what, within=20.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port} within {within} s")


class Services:
    """A private redis-server and scheduler (and optionally executors), stopped on exit."""

    def __init__(self, bin_dir, executors):
        self.dir = tempfile.mkdtemp(prefix="tarefa-pp-")
        self.processes = []
        redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{redis_port}"
        self.start(
            "redis-server",
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec",
             "--maxmemory-policy", "noeviction", "--dir", self.dir],
            redis_port,
        )
        grpc_port, http_port = free_port(), free_port()
        self.scheduler = f"127.0.0.1:{grpc_port}"
        self.start(
            "scheduler",
            [os.path.join(bin_dir, "tarefa-scheduler"), "--listen", self.scheduler,
             "--http-listen", f"127.0.0.1:{http_port}", "--redis-url", self.redis_url],
            grpc_port,
        )
        for i in range(executors):
            self.start(
                f"executor-{i}",
                [os.path.join(bin_dir, "tarefa-executor"), "--redis-url", self.redis_url],
                None,
            )

    def start(self, name, argv, port):
        log = open(os.path.join(self.dir, f"{name}.log"), "wb")
        env = dict(os.environ, RUST_LOG="warn")
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.processes.append(process)
        if port is not None:
            wait_port(port, process, name)

    def stop(self):
        for process in reversed(self.processes):
            process.terminate()
        for process in reversed(self.processes):
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- the measuring child: imports the package under test ------------------------------------


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def timed(n, call):
    """Seconds per call, n calls one after the other."""
    samples = []
    clock = time.perf_counter
    for i in range(n):
        start = clock()
        call(i)
        samples.append(clock() - start)
    return samples


def summary_ms(samples):
    return {
        "p50": percentile(samples, 0.5) * 1e3,
        "mean": statistics.fmean(samples) * 1e3,
        "p99": percentile(samples, 0.99) * 1e3,
    }


def redis_pinger(url):
    host, port = url.removeprefix("redis://").split("/")[0].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def ping(_i):
        sock.sendall(b"PING\r\n")
        reply = sock.recv(64)
        assert reply == b"+PONG\r\n", reply

    return sock, ping


def measure(args):
    import grpc

    import tarefa
    from tarefa.v1 import tarefa_pb2 as pb

    client = tarefa.Client(args.scheduler)
    stub = client.stub
    refused = pb.GetTaskRequest(task_id="not-an-id")

    def refused_rpc(_i):
        try:
            stub.GetTask(refused, timeout=client.timeout)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
        else:
            raise AssertionError("GetTask of an invalid id was answered")

    prebuilt = pb.SubmitTaskRequest(task_type="noop", payload=b'{"i":0}')

    def raw_submit(_i):
        stub.SubmitTask(prebuilt, timeout=client.timeout)

    def submit(i):
        client.submit("noop", {"i": i})

    sock, ping = redis_pinger(args.redis_url)
    try:
        import redis  # only for the redis-py figure

        redis_py = redis.Redis.from_url(args.redis_url)
        redis_py_ping = lambda _i: redis_py.ping()  # noqa: E731
    except ImportError:
        redis_py_ping = None

    n = args.samples
    # Warm up the connection, the scheduler's and Redis's paths, and Python's caches.
    for i in range(200):
        refused_rpc(i)
        submit(i)
        ping(i)

    if args.profile:
        profile(args, client, submit)
        return {}

    out = {"package": os.path.dirname(os.path.dirname(os.path.abspath(tarefa.__file__)))}
    # Interleaved call by call, so that a noisy neighbour hits every figure alike.
    figures = {"floor_rpc": refused_rpc, "redis_rtt": ping, "submit": submit,
               "raw_submit": raw_submit}
    if redis_py_ping is not None:
        figures["redis_py"] = redis_py_ping
    series = {name: [] for name in figures}
    clock = time.perf_counter
    for i in range(n):
        for name, call in figures.items():
            start = clock()
            call(i)
            series[name].append(clock() - start)
    for name, samples in series.items():
        if samples:
            out[name] = summary_ms(samples)
    floors = out["floor_rpc"]["p50"] + out["redis_rtt"]["p50"]
    out["submit_over_floors"] = out["submit"]["p50"] / floors
    out["raw_submit_over_floors"] = out["raw_submit"]["p50"] / floors

    # One SubmitTasks per batch, requests built in the loop.
    total = args.tasks - args.tasks % args.batch
    cpu = CpuMeter(args.watch_pids)
    start = time.perf_counter()
    for first in range(0, total, args.batch):
        handles = client.submit_many(
            [client.request("noop", {"i": i}) for i in range(first, first + args.batch)]
        )
        assert len(handles) == args.batch
    out["submit_many_per_s"] = total / (time.perf_counter() - start)
    out["submit_many_cpu_us"] = cpu.per_task(total)

    if hasattr(client, "submit_nowait"):
        nowait_client = client
        if args.client_options:
            try:
                nowait_client = tarefa.Client(args.scheduler, **args.client_options)
            except TypeError:
                nowait_client = client  # a package without these options
        cpu = CpuMeter(args.watch_pids)
        out["nowait_per_s"] = nowait_rate(nowait_client, args.tasks, args.window)
        out["nowait_cpu_us"] = cpu.per_task(args.tasks)
        if nowait_client is not client:
            nowait_client.close()
    sock.close()
    client.close()
    return out


class CpuMeter:
    """CPU time (user + system) of this process and of the watched ones, from now on."""

    def __init__(self, pids):
        self.pids = pids
        self.start = self.read()

    def read(self):
        times = {"python": time.process_time()}
        tick = os.sysconf("SC_CLK_TCK")
        for name, pid in self.pids.items():
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            times[name] = (int(fields[11]) + int(fields[12])) / tick
        return times

    def per_task(self, tasks):
        """Microseconds of CPU per task, by process."""
        end = self.read()
        return {name: (end[name] - self.start[name]) / tasks * 1e6 for name in end}


def nowait_rate(client, tasks, window):
    """Tasks/s of submit_nowait from this one thread, at most `window` in flight."""
    from collections import deque

    in_flight = deque()
    start = time.perf_counter()
    for i in range(tasks):
        if len(in_flight) >= window:
            in_flight.popleft().result()
        in_flight.append(client.submit_nowait("noop", {"i": i}))
    for future in in_flight:
        future.result()
    return tasks / (time.perf_counter() - start)


def profile(args, client, submit):
    import cProfile
    import pstats

    for name, run in (
        ("blocking submit", lambda: timed(args.samples, submit)),
        ("submit_nowait", lambda: nowait_rate(client, args.tasks, args.window)),
    ):
        profiler = cProfile.Profile()
        profiler.enable()
        run()
        profiler.disable()
        print(f"==== {name}", file=sys.stderr)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(14)


# ---- the parent: services, rounds, medians ----------------------------------------------------


def run_round(args, package):
    env = dict(os.environ, PYTHONPATH=package)
    argv = [sys.executable, os.path.abspath(__file__), "--child", "--scheduler", args.scheduler,
            "--redis-url", args.redis_url, "--samples", str(args.samples), "--tasks",
            str(args.tasks), "--batch", str(args.batch), "--window", str(args.window),
            "--watch-pids", json.dumps(args.watch_pids),
            "--client-options", json.dumps(args.client_options)]
    if args.profile:
        argv.append("--profile")
    result = subprocess.run(argv, env=env, stdout=subprocess.PIPE, check=True, text=True)
    return json.loads(result.stdout)


def median_of(rounds, *path):
    values = []
    for r in rounds:
        value = r
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            values.append(value)
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def report(label, rounds):
    rows = [
        ("floor_rpc p50 (refused GetTask)", ("floor_rpc", "p50"), "ms"),
        ("redis_rtt p50 (PING, raw socket)", ("redis_rtt", "p50"), "ms"),
        ("redis-py PING p50", ("redis_py", "p50"), "ms"),
        ("submit p50", ("submit", "p50"), "ms"),
        ("submit mean", ("submit", "mean"), "ms"),
        ("submit p99", ("submit", "p99"), "ms"),
        ("raw stub SubmitTask p50", ("raw_submit", "p50"), "ms"),
        ("submit p50 / (floor_rpc + redis_rtt)", ("submit_over_floors",), "x"),
        ("raw SubmitTask p50 / (floor_rpc + redis_rtt)", ("raw_submit_over_floors",), "x"),
        ("submit_many", ("submit_many_per_s",), "tasks/s"),
        ("submit_nowait", ("nowait_per_s",), "tasks/s"),
    ]
    for figure in ("submit_many", "nowait"):
        for process in ("python", "scheduler", "redis"):
            rows.append((f"  {figure} CPU of {process}", (f"{figure}_cpu_us", process), "us/task"))
    print(f"{label}  ({len(rounds)} rounds: median [min - max])")
    for name, path, unit in rows:
        m = median_of(rounds, *path)
        if m is None:
            continue
        fmt = {"tasks/s": "{:.0f}", "ms": "{:.3f}", "us/task": "{:.1f}"}.get(unit, "{:.2f}")
        print(f"  {name:46s} {fmt.format(m[0]):>9s} {unit:8s}"
              f" [{fmt.format(m[1])} - {fmt.format(m[2])}]")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scheduler", help="host:port of a running scheduler (else start one)")
    parser.add_argument("--redis-url", help="its Redis, for the PING round trip")
    parser.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"))
    parser.add_argument("--executors", type=int, default=0)
    parser.add_argument("--package", default=os.path.join(ROOT, "clients", "python"))
    parser.add_argument("--baseline-package", help="another copy of clients/python, alternated")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=2000, help="sequential calls per figure")
    parser.add_argument("--tasks", type=int, default=20000, help="tasks per throughput figure")
    parser.add_argument("--batch", type=int, default=100, help="tasks per submit_many")
    parser.add_argument("--window", type=int, default=256, help="submit_nowait calls in flight")
    parser.add_argument("--client-options", type=json.loads, default={},
                        help="JSON keyword arguments of tarefa.Client for the nowait figure")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--watch-pids", type=json.loads, default={}, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure(args)))
        return
    if (args.scheduler is None) != (args.redis_url is None):
        parser.error("--scheduler and --redis-url go together")
    services = None
    if args.scheduler is None:
        services = Services(args.bin_dir, args.executors)
        args.scheduler, args.redis_url = services.scheduler, services.redis_url
        args.watch_pids = {"redis": services.processes[0].pid,
                           "scheduler": services.processes[1].pid}
    try:
        packages = [("this package", args.package)]
        if args.baseline_package:
            packages.append(("baseline", args.baseline_package))
        results = {label: [] for label, _ in packages}
        for _ in range(1 if args.profile else args.rounds):
            for label, package in packages:
                results[label].append(run_round(args, package))
    finally:
        if services is not None:
            services.stop()
    if args.profile:
        return
    if args.json:
        print(json.dumps(results))
        return
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, scheduler {args.scheduler}")
    for label, rounds in results.items():
        report(label, rounds)


if __name__ == "__main__":
    main()
