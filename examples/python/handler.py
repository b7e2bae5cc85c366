#!/usr/bin/env python3
"""A Tarefa task handler in Python: counts the words of a text.

    pip install ./clients/python
    python examples/python/handler.py --port 50061
    tarefa-executor --handler word_count=grpc://127.0.0.1:50061

Then submit `word_count` tasks from any language (see producer.py).
"""

import argparse
import collections
import logging
import re

import tarefa


def word_count(args, context):
    """{"text": "..."} -> {"words": 9, "top": [["the", 3], ...]}."""
    if not isinstance(args, dict) or not isinstance(args.get("text"), str):
        # Retrying cannot fix a bad payload: fail permanently.
        raise tarefa.Fail('expected {"text": "..."}')
    words = re.findall(r"[\w']+", args["text"].lower())
    top = collections.Counter(words).most_common(args.get("top", 3))
    logging.info("task %s attempt %s: %d words", context.task_id, context.attempt, len(words))
    return {"words": len(words), "top": top}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=50061)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 in a container")
    options = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    tarefa.serve({"word_count": word_count}, port=options.port, host=options.host)


if __name__ == "__main__":
    main()
