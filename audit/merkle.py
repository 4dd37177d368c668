"""The audit log's Merkle tree, exactly as RFC 9162 section 2.1 defines it.

Leaf hash: SHA-256(0x00 || entry); interior node: SHA-256(0x01 || left || right); the root of n
leaves splits at the largest power of two below n. Proof generation follows the recursive
definitions of sections 2.1.3.1 (inclusion) and 2.1.4.1 (consistency); verification follows the
iterative algorithms of 2.1.3.2 and 2.1.4.2. A proof that does not verify raises ProofError.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """A proof, root or hash that does not check out."""


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly less than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


class _Provable:
    """What a tree offers once it can give the hash of any leaf range: sizes checked, compact ranges, proofs."""

    @property
    def size(self) -> int:
        raise NotImplementedError

    def _range(self, start: int, end: int) -> bytes:
        raise NotImplementedError

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise ProofError(f"tree size {size} is outside 0..{self.size}")

    def prefix(self, size: int) -> list[bytes]:
        """The hashes of the complete subtrees that cover leaves [0, size), largest first (a compact range)."""
        self._check_size(size)
        return _compact_range(self._range, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 9162 2.1.3.1."""
        self._check_size(size)
        if not 0 <= index < size:
            raise ProofError(f"leaf {index} is not in a tree of size {size}")
        return _proof_path(self._range, index, 0, size)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """PROOF(size1, D[0:size2]) of RFC 9162 2.1.4.1."""
        self._check_size(size2)
        if not 0 < size1 <= size2:
            raise ProofError(f"no consistency proof from size {size1} to size {size2}")
        return _proof_subproof(self._range, size1, 0, size2, complete=True)


class MerkleTree(_Provable):
    """Leaf hashes in order, with every complete, aligned subtree's hash kept for fast roots and proofs.

    ``levels[k][i]`` is the hash of leaves ``i*2**k .. (i+1)*2**k - 1``; appending a leaf adds at most
    one node per level, so any range hash takes O(log n) look-ups.
    """

    def __init__(self, leaves: list[bytes] | None = None) -> None:
        self.levels: list[list[bytes]] = [[]]
        for leaf in leaves or []:
            self.append(leaf)

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def append(self, leaf: bytes) -> int:
        """Adds a leaf hash; returns its index."""
        if len(leaf) != HASH_SIZE:
            raise ProofError(f"a leaf hash has {HASH_SIZE} bytes, not {len(leaf)}")
        index = self.size
        self.levels[0].append(leaf)
        level, position = 0, index
        while position % 2 == 1:
            parent = node_hash(self.levels[level][position - 1], self.levels[level][position])
            level, position = level + 1, position // 2
            if len(self.levels) == level:
                self.levels.append([])
            self.levels[level].append(parent)
        return index

    def _range(self, start: int, end: int) -> bytes:
        """MTH of leaves [start, end): a kept node when complete and aligned, else split."""
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0 and start % n == 0:
            return self.levels[n.bit_length() - 1][start // n]
        k = _split(n)
        return node_hash(self._range(start, start + k), self._range(start + k, end))

    def root(self, size: int | None = None) -> bytes:
        """The root of the tree's first ``size`` leaves (all of them by default)."""
        size = self.size if size is None else size
        self._check_size(size)
        return self._range(0, size)


def _check_hashes(*hashes: bytes) -> None:
    for h in hashes:
        if len(h) != HASH_SIZE:
            raise ProofError(f"a hash has {HASH_SIZE} bytes, not {len(h)}")


def verify_inclusion(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> None:
    """Checks that ``leaf`` is entry ``index`` of the tree of ``size`` leaves whose root is ``root``."""
    _check_hashes(leaf, root, *proof)
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not below tree size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the inclusion proof is shorter than the tree is deep")
    if r != root:
        raise ProofError("the inclusion proof leads to another root")


def verify_consistency(size1: int, size2: int, proof: list[bytes], root1: bytes, root2: bytes) -> None:
    """Checks that the tree of ``size2`` leaves (``root2``) extends the tree of ``size1`` leaves (``root1``)."""
    if size1 <= 0 or size2 < size1:
        raise ProofError(f"no consistency to prove from size {size1} to size {size2}")
    if size1 == size2:
        if proof:
            raise ProofError("trees of equal size need an empty proof")
        if root1 != root2:
            raise ProofError("trees of equal size have different roots")
        return
    _check_hashes(root1, root2, *proof)
    if not proof:
        raise ProofError("the consistency proof is empty")
    path = [root1, *proof] if size1 & (size1 - 1) == 0 else list(proof)
    fr, sr = _chain_consistency(size1, size2, path)
    if fr != root1:
        raise ProofError("the consistency proof does not lead to the first root")
    if sr != root2:
        raise ProofError("the consistency proof does not lead to the second root")


def _chain_consistency(size1: int, size2: int, path: list[bytes]) -> tuple[bytes, bytes]:
    """Steps 3 to 6 of RFC 9162 2.1.4.2: the two roots the path leads to."""
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the consistency proof is shorter than the tree is deep")
    return fr, sr


class CompactRange:
    """A tree's right frontier: what it takes to extend it leaf by leaf and compute its root, in O(log n).

    Built from ``MerkleTree.prefix`` (or empty), it lets a verifier check a slice of a log against
    checkpoints without holding the leaves before the slice, or any leaf it has passed.
    """

    def __init__(self, size: int = 0, prefix: list[bytes] | None = None) -> None:
        hashes = list(prefix or [])
        sizes = [1 << k for k in range(size.bit_length() - 1, -1, -1) if size >> k & 1]
        if len(sizes) != len(hashes) or any(len(h) != HASH_SIZE for h in hashes):
            raise ProofError(f"a prefix of {size} leaves has {len(sizes)} hashes of {HASH_SIZE} bytes")
        self.size = size
        self._nodes = list(zip(sizes, hashes, strict=True))

    def append(self, leaf: bytes) -> list[tuple[int, bytes]]:
        """Adds a leaf hash; returns the complete subtrees it made, as (level, hash), the leaf first."""
        if len(leaf) != HASH_SIZE:
            raise ProofError(f"a leaf hash has {HASH_SIZE} bytes, not {len(leaf)}")
        made = [(0, leaf)]
        self._nodes.append((1, leaf))
        while len(self._nodes) > 1 and self._nodes[-1][0] == self._nodes[-2][0]:
            (n, right), (_, left) = self._nodes.pop(), self._nodes.pop()
            self._nodes.append((2 * n, node_hash(left, right)))
            made.append(((2 * n).bit_length() - 1, self._nodes[-1][1]))
        self.size += 1
        return made

    def root(self) -> bytes:
        if not self._nodes:
            return EMPTY_ROOT
        root = self._nodes[-1][1]
        for _, h in reversed(self._nodes[:-1]):
            root = node_hash(h, root)
        return root


class NodeSource(Protocol):
    """Where a ``FrontierTree`` finds what it does not keep: leaf hashes, and kept subtree hashes."""

    def leaf_hashes(self, start: int, end: int) -> list[bytes]: ...

    def node_hashes(self, level: int, indexes: list[int]) -> dict[int, bytes]: ...

    def leaf_blocks(self, firsts: list[int], width: int) -> dict[int, list[bytes]]:
        """The leaf hashes of each block [first, first + width), by first, read together."""
        ...


# Subtrees of 2**KEPT_LEVEL leaves and larger are kept (in the store); smaller ones are computed from leaves.
KEPT_LEVEL = 8


class FrontierTree(_Provable):
    """The same tree as ``MerkleTree`` in O(log n) memory: only its right frontier is held.

    Appending yields the complete subtrees of ``2**KEPT_LEVEL`` leaves or more that the new leaf
    completes, for the caller to keep (``NodeSource.node_hashes`` returns them later). Roots of
    earlier sizes and proofs read those kept hashes, and compute smaller subtrees from at most
    ``2**KEPT_LEVEL`` leaf hashes each. A long-running hub's memory then stays flat however long its
    log grows.
    """

    def __init__(self, source: NodeSource) -> None:
        self._source = source
        self._frontier = CompactRange()

    @property
    def size(self) -> int:
        return self._frontier.size

    def start_at(self, size: int, prefix: list[bytes]) -> None:
        """Continues a tree of ``size`` leaves from its compact range (``prefix``), e.g. after a restart."""
        self._frontier = CompactRange(size, prefix)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Adds a leaf hash; returns the kept subtrees it completes as (level, index, hash)."""
        index = self.size
        made = self._frontier.append(leaf)
        return [(level, index >> level, digest) for level, digest in made if level >= KEPT_LEVEL]

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        self._check_size(size)
        return self._frontier.root() if size == self.size else self._range(0, size)

    def inclusion_proofs(self, indexes: list[int], size: int) -> dict[int, list[bytes]]:
        """The proofs of several leaves in the tree of ``size`` leaves, by leaf index.

        Every hash they need is read in one go before any is computed: the kept subtree hashes one query
        per level, and the blocks of ``2**KEPT_LEVEL`` leaves their lower levels are computed from, in one
        more (a page of search hits spread over a long log would otherwise cost a read per hash).
        """
        self._check_size(size)
        for index in indexes:
            if not 0 <= index < size:
                raise ProofError(f"leaf {index} is not in a tree of size {size}")
        wanted: set[tuple[int, int]] = set()

        def note(start: int, end: int) -> bytes:
            wanted.add((start, end))
            return b""

        for index in indexes:  # the same walk as below, only to learn which ranges the proofs take
            _proof_path(note, index, 0, size)
        known = self._read_ranges(wanted)
        return {index: _proof_path(lambda start, end: known[start, end], index, 0, size) for index in indexes}

    def _read_ranges(self, ranges: set[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """The hashes of leaf ranges, each split as ``_range`` splits it, the pieces read together."""
        pieces = {r: _aligned_pieces(*r) for r in ranges}
        kept: dict[int, set[int]] = {}
        blocks: set[int] = set()
        for start, end in (p for parts in pieces.values() for p in parts):
            level = (end - start).bit_length() - 1
            if level >= KEPT_LEVEL:
                kept.setdefault(level, set()).add(start >> level)
            else:
                blocks.add(start >> KEPT_LEVEL << KEPT_LEVEL)
        nodes = {
            (level, index): digest
            for level, indexes in kept.items()
            for index, digest in self._source.node_hashes(level, sorted(indexes)).items()
        }
        leaves = self._source.leaf_blocks(sorted(blocks), 1 << KEPT_LEVEL) if blocks else {}

        def piece(start: int, end: int) -> bytes:
            level = (end - start).bit_length() - 1
            if level >= KEPT_LEVEL:
                found = nodes.get((level, start >> level))
                if found is None:
                    raise ProofError(f"the kept hash of leaves {start}..{end - 1} is missing")
                return found
            first = start >> KEPT_LEVEL << KEPT_LEVEL
            block = leaves.get(first, [])
            if end - first > len(block):
                raise ProofError(f"the leaves {start}..{end - 1} are missing")
            return _subtree_root(block[start - first : end - first])

        return {r: _join(r[0], r[1], piece) for r in ranges}

    def _range(self, start: int, end: int) -> bytes:
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0 and start % n == 0:
            level = n.bit_length() - 1
            if level >= KEPT_LEVEL:
                found = self._source.node_hashes(level, [start >> level]).get(start >> level)
                if found is None:
                    raise ProofError(f"the kept hash of leaves {start}..{end - 1} is missing")
                return found
            return MerkleTree(self._source.leaf_hashes(start, end)).root()
        k = _split(n)
        return node_hash(self._range(start, start + k), self._range(start + k, end))


def _subtree_root(leaves: list[bytes]) -> bytes:
    """The hash of a complete subtree (a power of two of leaves), level by level."""
    level = leaves
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def _aligned_pieces(start: int, end: int) -> list[tuple[int, int]]:
    """The complete subtrees the hash of leaves [start, end) is made of, as RFC 9162's MTH splits it."""
    n = end - start
    if n == 0:
        return []
    if n & (n - 1) == 0 and start % n == 0:
        return [(start, end)]
    k = _split(n)
    return [*_aligned_pieces(start, start + k), *_aligned_pieces(start + k, end)]


def _join(start: int, end: int, piece: Callable[[int, int], bytes]) -> bytes:
    """The hash of leaves [start, end) from the hashes of its complete subtrees (``piece``)."""
    n = end - start
    if n == 0:
        return EMPTY_ROOT
    if n & (n - 1) == 0 and start % n == 0:
        return piece(start, end)
    k = _split(n)
    return node_hash(_join(start, start + k, piece), _join(start + k, end, piece))


# The hash of leaves [start, end), however a tree finds it: what the proof definitions below are written over.
Range = Callable[[int, int], bytes]


def _compact_range(rng: Range, size: int) -> list[bytes]:
    """The complete subtrees covering leaves [0, size), largest first."""
    out, offset = [], 0
    for k in range(size.bit_length() - 1, -1, -1):
        if size >> k & 1:
            out.append(rng(offset, offset + (1 << k)))
            offset += 1 << k
    return out


def _proof_path(rng: Range, m: int, start: int, end: int) -> list[bytes]:
    """PATH(m, D[start:end]) of RFC 9162 2.1.3.1."""
    n = end - start
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_proof_path(rng, m, start, start + k), rng(start + k, end)]
    return [*_proof_path(rng, m - k, start + k, end), rng(start, start + k)]


def _proof_subproof(rng: Range, m: int, start: int, end: int, *, complete: bool) -> list[bytes]:
    """SUBPROOF(m, D[start:end], complete) of RFC 9162 2.1.4.1."""
    n = end - start
    if m == n:
        return [] if complete else [rng(start, end)]
    k = _split(n)
    if m <= k:
        return [*_proof_subproof(rng, m, start, start + k, complete=complete), rng(start + k, end)]
    return [*_proof_subproof(rng, m - k, start + k, end, complete=False), rng(start, start + k)]
