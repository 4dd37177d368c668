"""RFC 9162 Merkle tree: every public test vector, and proofs of our own tree checked by the verifier."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from audit.merkle import (
    KEPT_LEVEL,
    CompactRange,
    FrontierTree,
    MerkleTree,
    ProofError,
    leaf_hash,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).resolve().parent / "vectors" / "merkle"


def _b64(value: str) -> bytes:
    return base64.b64decode(value)


def _cases(kind: str) -> list[tuple[str, dict[str, Any]]]:
    files = sorted((VECTORS / "testdata" / kind).rglob("*.json"))
    return [(str(f.relative_to(VECTORS / "testdata")), json.loads(f.read_text())) for f in files]


INCLUSION = _cases("inclusion")
CONSISTENCY = _cases("consistency")


def test_there_are_all_the_vectors() -> None:
    assert len(INCLUSION) + len(CONSISTENCY) == 196


@pytest.mark.parametrize(("name", "case"), INCLUSION, ids=[n for n, _ in INCLUSION])
def test_inclusion_vector(name: str, case: dict[str, Any]) -> None:
    def check() -> None:
        verify_inclusion(
            _b64(case["leafHash"]),
            case["leafIdx"],
            case["treeSize"],
            [_b64(p) for p in case["proof"] or []],
            _b64(case["root"]),
        )

    if case["wantErr"]:
        with pytest.raises(ProofError):
            check()
    else:
        check()


@pytest.mark.parametrize(("name", "case"), CONSISTENCY, ids=[n for n, _ in CONSISTENCY])
def test_consistency_vector(name: str, case: dict[str, Any]) -> None:
    def check() -> None:
        verify_consistency(
            case["size1"],
            case["size2"],
            [_b64(p) for p in case["proof"] or []],
            _b64(case["root1"]),
            _b64(case["root2"]),
        )

    if case["wantErr"]:
        with pytest.raises(ProofError):
            check()
    else:
        check()


def test_roots_of_every_size_match_the_published_ones() -> None:
    data = json.loads((VECTORS / "roots.json").read_text())
    leaves = [leaf_hash(bytes.fromhex(x)) for x in data["leaf_inputs_hex"]]
    tree = MerkleTree(leaves)
    for size, expected in enumerate(data["root_hashes_hex_by_tree_size"]):
        assert tree.root(size).hex() == expected, size


def test_our_proofs_verify_for_every_index_and_pair_of_sizes() -> None:
    tree = MerkleTree([leaf_hash(str(i).encode()) for i in range(70)])
    for size in range(1, 71):
        root = tree.root(size)
        for index in range(size):
            verify_inclusion(tree.levels[0][index], index, size, tree.inclusion_proof(index, size), root)
        for size1 in range(1, size + 1):
            verify_consistency(size1, size, tree.consistency_proof(size1, size), tree.root(size1), root)


def test_a_tampered_proof_or_leaf_fails() -> None:
    tree = MerkleTree([leaf_hash(str(i).encode()) for i in range(13)])
    proof = tree.inclusion_proof(5, 13)
    with pytest.raises(ProofError):
        verify_inclusion(leaf_hash(b"forged"), 5, 13, proof, tree.root())
    with pytest.raises(ProofError):
        verify_inclusion(tree.levels[0][5], 6, 13, proof, tree.root())
    bad = tree.consistency_proof(6, 13)
    bad[1] = leaf_hash(b"x")
    with pytest.raises(ProofError):
        verify_consistency(6, 13, bad, tree.root(6), tree.root(13))
    with pytest.raises(ProofError):
        tree.inclusion_proof(13, 13)


def test_a_compact_range_from_any_prefix_reaches_every_root() -> None:
    tree = MerkleTree([leaf_hash(str(i).encode()) for i in range(40)])
    for start in range(0, 41):
        compact = CompactRange(start, tree.prefix(start))
        assert compact.root() == tree.root(start)
        for i in range(start, 40):
            compact.append(tree.levels[0][i])
            assert compact.root() == tree.root(i + 1), (start, i)
    with pytest.raises(ProofError):
        CompactRange(5, tree.prefix(4))


class _Kept:
    """A node source in memory: the leaves, and the subtree hashes a FrontierTree handed out to keep."""

    def __init__(self) -> None:
        self.leaves: list[bytes] = []
        self.nodes: dict[tuple[int, int], bytes] = {}

    def leaf_hashes(self, start: int, end: int) -> list[bytes]:
        return self.leaves[start:end]

    def node_hashes(self, level: int, indexes: list[int]) -> dict[int, bytes]:
        return {i: self.nodes[level, i] for i in indexes if (level, i) in self.nodes}

    def leaf_blocks(self, firsts: list[int], width: int) -> dict[int, list[bytes]]:
        return {first: self.leaves[first : first + width] for first in firsts}


def test_the_frontier_tree_is_the_same_tree_in_logarithmic_memory() -> None:
    kept, reference = _Kept(), MerkleTree()
    tree = FrontierTree(kept)
    n = 3 * (1 << KEPT_LEVEL) + 77
    for i in range(n):
        leaf = leaf_hash(i.to_bytes(4, "big"))
        kept.leaves.append(leaf)
        reference.append(leaf)
        kept.nodes.update({(level, index): h for level, index, h in tree.append(leaf)})
        assert len(tree.prefix(tree.size)) == bin(tree.size).count("1")
    assert tree.root() == reference.root()
    # Only complete subtrees of 2**KEPT_LEVEL leaves or more were handed out, each exactly once.
    assert sorted(kept.nodes) == [(8, 0), (8, 1), (8, 2), (9, 0)]
    for size in (1, 2, 255, 256, 257, 511, 512, 700, n):
        assert tree.root(size) == reference.root(size)
        assert tree.prefix(size) == reference.prefix(size)
        for index in {0, size // 2, size - 1}:
            assert tree.inclusion_proof(index, size) == reference.inclusion_proof(index, size)
        several = sorted({0, min(1, size - 1), size // 3, size // 2, max(0, size - 2), size - 1})
        assert tree.inclusion_proofs(several, size) == {i: reference.inclusion_proof(i, size) for i in several}
        for size1 in {1, size // 3 or 1, size}:
            assert tree.consistency_proof(size1, size) == reference.consistency_proof(size1, size)
    resumed = FrontierTree(kept)
    resumed.start_at(n, reference.prefix(n))
    assert resumed.root() == reference.root() and resumed.inclusion_proof(5, n) == reference.inclusion_proof(5, n)


def test_a_missing_kept_hash_is_an_error_not_a_wrong_proof() -> None:
    kept = _Kept()
    tree = FrontierTree(kept)
    for i in range(600):
        kept.leaves.append(leaf_hash(bytes([i % 256, i // 256])))
        tree.append(kept.leaves[-1])  # the kept hashes are dropped
    with pytest.raises(ProofError, match="missing"):
        tree.inclusion_proof(3, 600)
    with pytest.raises(ProofError, match="missing"):
        tree.inclusion_proofs([3, 4], 600)
    with pytest.raises(ProofError, match="not in a tree"):
        tree.inclusion_proofs([3, 600], 600)
