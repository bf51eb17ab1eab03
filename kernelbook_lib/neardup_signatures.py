"""What two normalised forms are compared by (``neardup-v2``), and how candidate pairs are found.

A form (:class:`kernelbook_lib.neardup_normalize.Normalized`) gives two sets:

- its **operation features** (:func:`operation_features`): the features of its operation graph,
  a multiset (the k-th copy of a feature is its own element, so repeating a layer counts);
- its **scaffolding shingles** (:func:`shingles`, ``neardup-v1``'s set): 3-token shingles of
  its canonical tokens and each library operation it uses :data:`OPERATION_WEIGHT` times.

:func:`similarity` is :data:`OPERATIONS_SHARE` times the Jaccard similarity of the operation
features plus the rest times that of the scaffolding when both modules' forward paths were
walked; the scaffolding's alone when neither was; 0 when one was and the other was not (they
are never linked). Candidates come from MinHash and LSH on each form's operation features (or,
unwalked, its scaffolding), in two separate indexes, with the banding chosen for the similarity
of that set that the threshold requires.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from kernelbook_lib.neardup_normalize import TOKEN_SEP, parts

#: Tokens per scaffolding shingle (``neardup-v1``'s).
SHINGLE_SIZE = 3
#: Copies of each distinct library operation in the scaffolding set (``neardup-v1``'s).
OPERATION_WEIGHT = 8
#: The share of the similarity that is the operation graph's (measured on the labelled real
#: pairs, ``benchmarks/neardup_real.py``; see ``docs/neardup.md``).
OPERATIONS_SHARE = 0.9
#: MinHash permutations and seed (fixed: families must be the same on every run). 150 has many
#: divisors, so the LSH bands can fit the threshold closely.
NUM_PERM = 150
MINHASH_SEED = 20240917
#: A candidate pair whose MinHash estimate is this far below the threshold its set needs is not
#: compared exactly: at 150 permutations the estimate's standard deviation is at most 0.041.
ESTIMATE_MARGIN = 0.15
#: LSH must make a pair at the threshold a candidate with at least this probability.
CANDIDATE_RECALL_AT_THRESHOLD = 0.99
#: The lowest threshold an LSH index is built for (a lower one would make every pair a candidate).
MIN_INDEX_THRESHOLD = 0.05

_OP_COPIES: dict[tuple[str, int], tuple[str, ...]] = {}


def shingles(form: str) -> list[str]:
    """The scaffolding set of a form: its :data:`SHINGLE_SIZE`-grams of tokens, and each of its
    distinct library operations :data:`OPERATION_WEIGHT` times (``neardup-v1``'s whole set)."""
    tokens, ops, _, _ = parts(form)
    k = SHINGLE_SIZE
    out = [TOKEN_SEP.join(tokens)] if len(tokens) <= k else list(map(TOKEN_SEP.join, zip(*(tokens[i:] for i in range(k)))))
    weight = OPERATION_WEIGHT
    for op in ops:
        copies = _OP_COPIES.get((op, weight))
        if copies is None:
            copies = _OP_COPIES[op, weight] = tuple(f"{op}\x1d{copy}" for copy in range(weight))
        out += copies
    return out


def operation_features(form: str) -> list[str]:
    """The operation features of a form as a set: the k-th copy of a feature is ``feature#k``."""
    features = parts(form)[2]
    seen: dict[str, int] = {}
    out = []
    for f in features:
        n = seen[f] = seen.get(f, 0) + 1
        out.append(f"{f}#{n}")
    return out


def operations_threshold(threshold: float) -> float:
    """The operation-feature similarity a pair of walked modules needs at least to reach
    ``threshold`` (with identical scaffolding)."""
    return max(MIN_INDEX_THRESHOLD, (threshold - (1.0 - OPERATIONS_SHARE)) / OPERATIONS_SHARE)


def lsh_bands(threshold: float, num_perm: int = NUM_PERM) -> int:
    """The number of LSH bands: the fewest (so the fewest false candidates) whose banding makes
    a pair whose similarity equals ``threshold`` a candidate with probability at least
    :data:`CANDIDATE_RECALL_AT_THRESHOLD`. It divides ``num_perm``."""
    for bands in sorted(b for b in range(1, num_perm + 1) if num_perm % b == 0):
        rows = num_perm // bands
        if 1.0 - (1.0 - threshold**rows) ** bands >= CANDIDATE_RECALL_AT_THRESHOLD:
            return bands
    return num_perm


def minhash_library() -> str:
    """The MinHash implementation, as recorded in the outputs."""
    from importlib.metadata import version

    return f"rensa {version('rensa')} RMinHash"


_SIGN_BATCH = 5_000
_EMPTY = np.zeros(0, dtype=np.uint64)


@dataclass
class Signatures:
    """The sets, MinHash signatures and LSH domain of distinct normalised forms: ``walked[i]``
    says whether form ``i`` has operation features (its MinHash is of those, else of its
    scaffolding)."""

    forms: list[str]
    walked: list[bool]
    operation_sets: list[np.ndarray]  # sorted unique uint64 hashes, one per form
    scaffold_sets: list[np.ndarray]
    minhashes: list  # rensa.RMinHash, one per form
    _digests: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def of(cls, forms: list[str]) -> Signatures:
        import rensa

        walked: list[bool] = []
        op_sets: list[np.ndarray] = []
        sc_sets: list[np.ndarray] = []
        minhashes: list = []
        # In batches, so the shingle strings of only one batch are alive at a time.
        for start in range(0, len(forms), _SIGN_BATCH):
            batch = forms[start : start + _SIGN_BATCH]
            features = [operation_features(form) for form in batch]
            scaffold = [shingles(form) for form in batch]
            primary = [f if f else s for f, s in zip(features, scaffold)]
            minhashes += rensa.RMinHash.from_token_sets(primary, NUM_PERM, MINHASH_SEED)
            for f, hashes in zip(features, rensa.RMinHash.hash_token_sets([f or [""] for f in features])):
                walked.append(bool(f))
                op_sets.append(np.array(sorted(set(hashes)), dtype=np.uint64) if f else _EMPTY)
            sc_sets += [np.array(sorted(set(h)), dtype=np.uint64) for h in rensa.RMinHash.hash_token_sets(scaffold)]
        return cls(forms=forms, walked=walked, operation_sets=op_sets, scaffold_sets=sc_sets, minhashes=minhashes)

    @property
    def digests(self) -> np.ndarray:
        """The signatures as a ``(forms, NUM_PERM)`` uint32 matrix."""
        if self._digests is None:
            self._digests = np.array([m.digest() for m in self.minhashes], dtype=np.uint32).reshape(len(self.minhashes), NUM_PERM)
        return self._digests

    def domain_threshold(self, i: int, threshold: float) -> float:
        """The similarity of form ``i``'s MinHash set that a pair needs to reach ``threshold``."""
        return operations_threshold(threshold) if self.walked[i] else threshold

    def estimate_floor(self, i: int, threshold: float) -> float:
        return self.domain_threshold(i, threshold) - ESTIMATE_MARGIN

    def lsh(self, threshold: float) -> LSHIndex:
        """Two LSH indexes of these signatures (walked forms, the others), keyed by position."""
        return LSHIndex(self, threshold)

    def query(self, index: LSHIndex) -> Iterator[tuple[int, list[int]]]:
        """Each form's candidates in ``index`` (of the same domain), by position."""
        for walked, domain in ((True, index.walked), (False, index.unwalked)):
            positions = [i for i, w in enumerate(self.walked) if w is walked]
            if not positions or domain is None:
                continue
            results = domain.query_all([self.minhashes[i] for i in positions])
            yield from zip(positions, results)


class LSHIndex:
    """The LSH indexes (``rensa.RMinHashLSH``) of a :class:`Signatures`: one of the walked
    forms' operation features, at the operation threshold, one of the others' scaffolding."""

    def __init__(self, sigs: Signatures, threshold: float) -> None:
        import rensa

        self.walked = self.unwalked = None
        for walked in (True, False):
            positions = [i for i, w in enumerate(sigs.walked) if w is walked]
            if not positions:
                continue
            t = operations_threshold(threshold) if walked else threshold
            index = rensa.RMinHashLSH(t, NUM_PERM, lsh_bands(t))
            index.insert_pairs([(i, sigs.minhashes[i]) for i in positions])
            if walked:
                self.walked = index
            else:
                self.unwalked = index


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    if not a.size and not b.size:
        return 1.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


def similarity(a: Signatures, i: int, b: Signatures, j: int) -> float:
    """The exact similarity of ``a``'s form ``i`` and ``b``'s form ``j`` (see the module docstring)."""
    if a.walked[i] != b.walked[j]:
        return 0.0
    scaffold = _jaccard(a.scaffold_sets[i], b.scaffold_sets[j])
    if not a.walked[i]:
        return scaffold
    return OPERATIONS_SHARE * _jaccard(a.operation_sets[i], b.operation_sets[j]) + (1.0 - OPERATIONS_SHARE) * scaffold


#: Forms queried against an LSH index at a time, and candidate pairs whose MinHash estimate is
#: computed at a time (numpy: 150 uint32 per signature, so about 60 MB per batch).
_QUERY_BATCH = 5_000
_ESTIMATE_BATCH = 100_000


def candidate_pairs(sigs: Signatures, threshold: float):
    """The LSH candidate pairs ``(i, j)``, ``i < j``, of the forms of ``sigs`` (within each
    domain), in batches: yields the pairs whose MinHash estimate is at least the floor their
    domain needs (two arrays, sorted) and how many candidates the batch had. The estimates are
    computed in numpy from the signatures (the share of equal slots, as ``RMinHash.jaccard``
    does), not pair by pair in Python."""
    if not sigs.forms:
        return
    index = sigs.lsh(threshold)
    digests = sigs.digests
    for walked, domain in ((True, index.walked), (False, index.unwalked)):
        if domain is None:
            continue
        positions = np.array([i for i, w in enumerate(sigs.walked) if w is walked], dtype=np.int64)
        floor = (operations_threshold(threshold) if walked else threshold) - ESTIMATE_MARGIN
        for start in range(0, positions.size, _QUERY_BATCH):
            batch = positions[start : start + _QUERY_BATCH]
            results = domain.query_all([sigs.minhashes[i] for i in batch.tolist()])
            lengths = np.fromiter((len(r) for r in results), dtype=np.int64, count=len(results))
            right = np.fromiter(itertools.chain.from_iterable(results), dtype=np.int64, count=int(lengths.sum()))
            left = np.repeat(batch, lengths)
            keep = right > left
            left, right = left[keep], right[keep]
            survive = np.zeros(left.size, dtype=bool)
            for s in range(0, left.size, _ESTIMATE_BATCH):
                same = digests[left[s : s + _ESTIMATE_BATCH]] == digests[right[s : s + _ESTIMATE_BATCH]]
                survive[s : s + _ESTIMATE_BATCH] = same.mean(axis=1) >= floor
            left, right = left[survive], right[survive]
            order = np.lexsort((right, left))  # deterministic, whatever order the index answers in
            yield left[order], right[order], int(keep.sum())
