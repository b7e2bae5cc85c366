#!/usr/bin/env python3
"""Checks that the checked-in stubs in ``tarefa/v1/`` match ``proto/tarefa/v1/tarefa.proto``.

    pip install './clients/python[dev]'      # grpcio-tools, the pinned generator
    python clients/python/check_stubs.py     # exit 1 and a diff when they differ
    python clients/python/check_stubs.py --write   # regenerate them after a proto change

The stubs are generated with exactly the grpcio-tools version pinned in ``pyproject.toml``
(its ``dev`` extra): another version writes other version checks into them.
"""

from __future__ import annotations

import argparse
import difflib
import pathlib
import shutil
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
PROTO = "tarefa/v1/tarefa.proto"
STUBS = HERE / "tarefa" / "v1"
GENERATED = ("tarefa_pb2.py", "tarefa_pb2.pyi", "tarefa_pb2_grpc.py")
GENERATOR = "grpcio-tools==1.85.1"


def generate(out: pathlib.Path) -> None:
    try:
        from grpc_tools import protoc
        import grpc_tools
    except ImportError:
        sys.exit(f"grpcio-tools is missing: pip install '{GENERATOR}' (or './clients/python[dev]')")
    from importlib.metadata import version

    wanted = GENERATOR.split("==", 1)[1]
    if version("grpcio-tools") != wanted:
        sys.exit(f"grpcio-tools {version('grpcio-tools')} is installed; the stubs are made with {GENERATOR}")
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO_ROOT / PROTO),
        ]
    )
    if status != 0:
        sys.exit(f"protoc failed on {PROTO_ROOT / PROTO} (status {status})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="overwrite the checked-in stubs")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp)
        generate(out)
        fresh_dir = out / "tarefa" / "v1"
        if options.write:
            for name in GENERATED:
                shutil.copyfile(fresh_dir / name, STUBS / name)
            print(f"wrote {', '.join(GENERATED)} to {STUBS}")
            return 0
        stale = False
        for name in GENERATED:
            fresh = (fresh_dir / name).read_text().splitlines(keepends=True)
            current_path = STUBS / name
            current = current_path.read_text().splitlines(keepends=True) if current_path.exists() else []
            if fresh != current:
                stale = True
                sys.stdout.writelines(
                    difflib.unified_diff(current, fresh, f"checked-in/{name}", f"generated/{name}")
                )
        if stale:
            print(
                f"\nthe stubs in {STUBS} do not match {PROTO}: run `python {pathlib.Path(__file__).name} --write`",
                file=sys.stderr,
            )
            return 1
    print(f"stubs match {PROTO}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
