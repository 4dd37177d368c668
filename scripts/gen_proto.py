"""Regenerate the Python code for the contract in ``proto/``.

Run ``python scripts/gen_proto.py`` after changing a ``.proto`` file, and
commit the result. ``--check`` regenerates into a scratch directory and fails
when the checked-in code differs, so a stale contract cannot land. The
generator versions are pinned in pyproject.toml (extra ``dev``) because their
output carries them.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

from google.type import date_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE_DIR = Path("exchange") / "v1"


def _generate(out: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / PACKAGE_DIR).glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    # google/type/*.proto (Date) ship with googleapis-common-protos
    common = Path(date_pb2.__file__).resolve().parent.parent.parent
    scripts = Path(sysconfig.get_path("scripts"))
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"-I{common}",
        f"--plugin=protoc-gen-mypy={scripts / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={scripts / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (out / PACKAGE_DIR / "__init__.py").write_text('"""Generated code for the exchange.v1 contract: do not edit."""\n')


def _differences(generated: Path, checked_in: Path) -> list[str]:
    comparison = filecmp.dircmp(generated, checked_in, ignore=["__pycache__"])
    return comparison.left_only + comparison.right_only + comparison.diff_files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the checked-in code is stale")
    options = parser.parse_args()
    target = ROOT / PACKAGE_DIR
    with tempfile.TemporaryDirectory() as scratch:
        _generate(Path(scratch))
        generated = Path(scratch) / PACKAGE_DIR
        if options.check:
            stale = _differences(generated, target) if target.exists() else ["(missing)"]
            if stale:
                print(f"generated code is stale: {', '.join(sorted(stale))}; run scripts/gen_proto.py")
                return 1
            print("generated code is up to date")
            return 0
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(generated, target)
    print(f"wrote {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
