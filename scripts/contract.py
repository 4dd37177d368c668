"""Check the contract in ``proto/`` with buf: lint, and no breaking change since the last release.

``python scripts/contract.py check`` runs ``buf lint`` (rules in ``buf.yaml``) and ``buf breaking``
against the newest baseline in ``proto/releases/``: an image of the contract as it was released,
checked in because the project has no release tags to compare with. ``python scripts/contract.py
cut`` writes the baseline of the version in pyproject.toml; run it when releasing, and commit it.

buf is the npm package pinned in ``tools/buf`` (``npm ci --prefix tools/buf``; ``make test`` does
it). The googleapis files the contract imports (``google/type/date.proto``) are copied from the
installed googleapis-common-protos into ``build/googleapis``, where ``buf.yaml`` looks for them:
the same files ``gen_proto.py`` compiles with, so buf and the generated code agree.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from google.type import date_pb2

ROOT = Path(__file__).resolve().parent.parent
BUF = ROOT / "tools" / "buf" / "node_modules" / ".bin" / "buf"
CONTRACT = Path("proto") / "exchange" / "v1"
RELEASES = Path("proto") / "releases"
IMPORTS = Path("build") / "googleapis"
BASELINE = re.compile(r"exchange-v1-(\d+)\.(\d+)\.(\d+)\.binpb")
# google/protobuf/* is built into buf; any other google/ import comes from the googleapis common protos.
GOOGLEAPIS_IMPORT = re.compile(r'^import\s+"(google/(?!protobuf/)[\w/]+\.proto)";', re.M)


def prepare_imports(root: Path) -> list[str]:
    """Copies the googleapis files the contract imports into ``build/googleapis``; their names."""
    common = Path(date_pb2.__file__).resolve().parent.parent.parent
    wanted = sorted({m for p in (root / CONTRACT).glob("*.proto") for m in GOOGLEAPIS_IMPORT.findall(p.read_text())})
    target = root / IMPORTS
    if target.exists():
        shutil.rmtree(target)
    for name in wanted:
        source = common / name
        if not source.is_file():
            raise SystemExit(f"{name} is imported by the contract but googleapis-common-protos does not ship it")
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target / name)
    target.mkdir(parents=True, exist_ok=True)  # buf.yaml names it even when nothing is imported
    return wanted


def latest_baseline(root: Path) -> Path:
    """The baseline of the highest released version in ``proto/releases``."""
    found = [
        (tuple(int(n) for n in m.groups()), path)
        for path in (root / RELEASES).glob("*.binpb")
        if (m := BASELINE.match(path.name))
    ]
    if not found:
        raise SystemExit(f"no release baseline in {RELEASES}: cut one with `scripts/contract.py cut`")
    return max(found)[1]


def _buf(buf: Path, root: Path, *args: str) -> int:
    if not buf.exists():
        raise SystemExit(f"buf is not installed at {buf}: run `npm ci --prefix tools/buf` (or `make test`)")
    print("buf", *args, flush=True)
    return subprocess.run([str(buf), *args], cwd=root, check=False).returncode


def check(root: Path, buf: Path) -> int:
    """Lint, then breaking changes against the latest release; non-zero if either fails."""
    prepare_imports(root)
    baseline = latest_baseline(root).relative_to(root)
    linted = _buf(buf, root, "lint")
    compared = _buf(buf, root, "breaking", "proto", "--against", str(baseline))
    if linted or compared:
        print("the contract fails its checks (above); see buf.yaml and docs/integrating.md, 'The contract's checks'")
        return 1
    print(f"the contract is lint-clean and compatible with {baseline.name}")
    return 0


def cut(root: Path, buf: Path, force: bool) -> int:
    """Writes the baseline of the version in pyproject.toml (refusing to overwrite a released one)."""
    version = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    out = root / RELEASES / f"exchange-v1-{version}.binpb"
    if out.exists() and not force:
        print(f"{out.relative_to(root)} exists: a released contract does not change (--force to replace it)")
        return 1
    prepare_imports(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    # No source info: the comparison needs only the descriptors, and the file stays small.
    done = _buf(buf, root, "build", "proto", "--exclude-source-info", "-o", str(out.relative_to(root)))
    if done == 0:
        print(f"wrote {out.relative_to(root)}: commit it with the release")
    return done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["check", "cut"])
    parser.add_argument("--root", type=Path, default=ROOT, help="the directory holding buf.yaml and proto/")
    parser.add_argument("--buf", type=Path, default=BUF, help="the buf executable")
    parser.add_argument("--force", action="store_true", help="cut: replace an existing baseline")
    options = parser.parse_args()
    root = options.root.resolve()
    if options.command == "check":
        return check(root, options.buf)
    return cut(root, options.buf, options.force)


if __name__ == "__main__":
    sys.exit(main())
