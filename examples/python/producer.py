#!/usr/bin/env python3
"""Submits tasks to Tarefa from Python and waits for their results.

    pip install ./clients/python
    python examples/python/producer.py --scheduler 127.0.0.1:50051

`fib` runs in the Rust executor's demo handlers; `word_count` in handler.py (route it with
`tarefa-executor --handler word_count=grpc://127.0.0.1:50061`).
"""

import argparse

import tarefa


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scheduler", default="127.0.0.1:50051", help="the scheduler's gRPC address")
    parser.add_argument("--timeout", type=float, default=60, help="seconds to wait for each result")
    options = parser.parse_args()

    with tarefa.Client(options.scheduler) as client:
        fib = client.submit("fib", {"n": 90})
        words = client.submit("word_count", {"text": "the quick brown fox jumps over the lazy dog the end"})
        print(f"fib(90) = {fib.wait(timeout=options.timeout)}  [{fib.id}]")
        counted = words.wait(timeout=options.timeout)
        print(f"word_count = {counted['words']} words, top {counted['top']}  [{words.id}]")

        bad = client.submit("word_count", {"txt": "a typo in the arguments"})
        try:
            bad.wait(timeout=options.timeout)
        except tarefa.TaskFailed as failed:
            print(f"bad word_count ended {failed.state}: {failed.error}  [{bad.id}]")


if __name__ == "__main__":
    main()
