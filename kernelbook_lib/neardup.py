"""Near-duplicate families of PyTorch modules (and the matching behind decontamination).

KernelBook's modules were scraped from public repositories, where one task appears again and
again under another class name, with a docstring, with its layers in an ``nn.Sequential`` or
written out, with GELU or hard-swish spelled out, with other sizes in ``get_inputs()``. Each copy
is its own ``problem_id`` (an exact hash); this module groups them into **families**. Two
modules are the same task when they run the same operations in the same order on the forward
path (``benchmarks/labels/neardup_rule.md``); ``docs/neardup.md`` has the design and the figures.

1. **Normalise** (version :data:`NORMALIZATION_VERSION`, :func:`normalize`, in
   :mod:`kernelbook_lib.neardup_normalize`): parse with :mod:`ast` (never execute), walk the
   forward path into an operation graph (every spelling of an operation one label, written-out
   definitions the operation they define, calls into the module's own layers and helpers
   followed, dead code gone), and keep ``neardup-v1``'s canonical tokens as the scaffolding.
2. **Compare** (:func:`similarity`): :data:`OPERATIONS_SHARE` of the similarity is the
   (multiset) Jaccard similarity of the operation graphs' features, the rest that of the
   scaffolding's shingles (:func:`shingles`, ``neardup-v1``'s set); a module whose forward could
   not be walked is compared by its scaffolding alone, and only with such modules.
3. **Find the pairs** without comparing all of them: modules with the same form are one at once;
   distinct forms get MinHash signatures and LSH banding (``rensa``) of their operation features
   (or scaffolding), candidates whose MinHash estimate is far below what the threshold needs are
   dropped, the rest are compared exactly.
4. **Families cannot chain**: :func:`group_families` takes the forms in a fixed order (the most
   connected first) and puts a form into a family only when it is within the threshold of
   *every* member (complete linkage, :func:`_link_families`), so A ~ B and B ~ C never put A with
   C unless A ~ C. A family's id is the smallest key among its members.

:class:`ReferenceIndex` matches modules against reference items (a benchmark's) with the same
normalisation, sets and threshold (``kernelbook_lib.decontam``). Nothing here imports Prefect or
polars; the normalisation of many modules runs in a process pool (:func:`normalize_many`).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from typing import TYPE_CHECKING

from kernelbook_lib.defaults import DEFAULT_NEAR_DUP_THRESHOLD
from kernelbook_lib.neardup_groups import FamilyResult, family_stats, link_families, singleton_families
from kernelbook_lib.neardup_normalize import Normalized, normalize, normalized_text, parts
from kernelbook_lib.neardup_signatures import (
    CANDIDATE_RECALL_AT_THRESHOLD, ESTIMATE_MARGIN, MINHASH_SEED, NUM_PERM, OPERATION_WEIGHT, OPERATIONS_SHARE,
    SHINGLE_SIZE, Signatures, candidate_pairs, lsh_bands, minhash_library, operation_features, operations_threshold,
    shingles, similarity,
)  # fmt: skip

if TYPE_CHECKING:  # the workers import this module: keep them free of the display's imports
    from kernelbook_lib.progress import Progress

__all__ = [
    "CANDIDATE_RECALL_AT_THRESHOLD", "DEFAULT_NEAR_DUP_THRESHOLD", "ESTIMATE_MARGIN", "MINHASH_SEED", "NORMALIZATION_VERSION",
    "NUM_PERM", "OPERATION_WEIGHT", "OPERATIONS_SHARE", "SHINGLE_SIZE", "FamilyResult", "Match", "Normalized",
    "ReferenceIndex", "Signatures", "check_threshold", "distinct_forms", "families_of_forms", "family_stats", "form_digest", "group_families",
    "lsh_bands", "minhash_library", "normalize", "normalize_many", "normalized_text", "operation_features", "parts",
    "shingles", "similarity", "singleton_families",
]  # fmt: skip

#: Recorded in every output that depends on the normalisation: change it whenever
#: :func:`normalize` changes what it emits, since families and matches change with it.
NORMALIZATION_VERSION = "neardup-v2"


# --- normalising many modules ------------------------------------------------------------------


def _form_worker(codes: list[str]) -> tuple[list[str], list[bool], dict[str, int], tuple[int, float, float]]:
    """One chunk of modules, normalised (runs in a worker process): the forms, whether each
    parsed, why modules were not walked (counts), and the worker's pid, CPU seconds so far and
    peak RSS in MiB."""
    import resource

    forms, parsed, untraced = [], [], {}
    for code in codes:
        n = normalize(code)
        forms.append(n.form if n.tokens or n.features else "")
        parsed.append(n.parsed)
        if n.untraced is not None:
            untraced[n.untraced] = untraced.get(n.untraced, 0) + 1
    return forms, parsed, untraced, (os.getpid(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _worker_start() -> None:
    """A normalisation worker frees every syntax tree by reference counting (they hold no
    cycles): the cyclic garbage collector would only rescan them."""
    import gc

    gc.disable()


#: Below this many modules the normalisation runs in the calling process: a pool's start
#: (a fresh process importing this module) costs more than it saves.
MIN_MODULES_FOR_POOL = 4000
_CHUNK = 2000


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _merge_counts(into: dict[str, int], counts: dict[str, int]) -> None:
    for key, n in counts.items():
        into[key] = into.get(key, 0) + n


def normalize_many(
    codes: Sequence[str],
    workers: int | None = None,
    progress: Progress | None = None,
    stats: dict | None = None,
) -> tuple[list[str], list[bool]]:
    """:func:`normalize` over many modules: each module's form (:attr:`Normalized.form`, ''
    when it has nothing to compare) and whether it parsed. ``workers``: processes to use
    (default: the cores this process may use); small inputs run here. ``progress`` advances by
    the modules done. ``stats`` (optional) receives the workers used, their peak RSS and CPU,
    and why modules were not walked (``untraced_reasons``)."""
    workers = default_workers() if workers is None else max(1, workers)
    untraced: dict[str, int] = {}
    if workers == 1 or len(codes) < MIN_MODULES_FOR_POOL:
        forms, parsed, untraced, _ = _form_worker(list(codes))
        if progress is not None:
            progress.advance(len(codes))
        if stats is not None:
            stats.update(workers=1, worker_peak_rss_mib=None, worker_cpu_s=None, untraced_reasons=dict(sorted(untraced.items())))
        return forms, parsed
    chunks = [list(codes[i : i + _CHUNK]) for i in range(0, len(codes), _CHUNK)]
    forms = []
    parsed = []
    peak = 0.0
    # forkserver, not fork: the caller holds threads (polars, Prefect) that a fork would copy in
    # a locked state. The server imports this module once; each worker is forked from it.
    context = get_context("forkserver")
    context.set_forkserver_preload([__name__])
    used = min(workers, len(chunks))
    cpu: dict[int, float] = {}
    with ProcessPoolExecutor(max_workers=used, mp_context=context, initializer=_worker_start) as pool:
        for chunk_forms, chunk_parsed, chunk_untraced, (pid, seconds, rss) in pool.map(_form_worker, chunks):
            forms += chunk_forms
            parsed += chunk_parsed
            _merge_counts(untraced, chunk_untraced)
            peak = max(peak, rss)
            cpu[pid] = max(cpu.get(pid, 0.0), seconds)
            if progress is not None:
                progress.advance(len(chunk_forms))
    if stats is not None:
        stats.update(workers=used, worker_peak_rss_mib=round(peak, 1), worker_cpu_s=round(sum(cpu.values()), 2),
                     untraced_reasons=dict(sorted(untraced.items())))  # fmt: skip
    return forms, parsed


def check_threshold(threshold: float) -> None:
    from kernelbook_lib.errors import UserError

    if not isinstance(threshold, (int, float)) or math.isnan(threshold) or not 0.0 < threshold <= 1.0:
        raise UserError(f"--near-dup-threshold must be above 0 and at most 1, not {threshold}")


def distinct_forms(forms: Sequence[str]) -> tuple[list[str], list[int]]:
    """The distinct non-empty forms, and for each input its position among them (-1: empty)."""
    index: dict[str, int] = {}
    positions: list[int] = []
    for form in forms:
        if not form:
            positions.append(-1)
            continue
        pos = index.get(form)
        if pos is None:
            pos = index[form] = len(index)
        positions.append(pos)
    return list(index), positions


# --- families ----------------------------------------------------------------------------------


def group_families(
    keys: Sequence[str],
    codes: Sequence[str],
    threshold: float = DEFAULT_NEAR_DUP_THRESHOLD,
    workers: int | None = None,
    progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> FamilyResult:
    """Near-duplicate families of the modules ``codes``, one per distinct ``keys[i]`` (e.g. a
    ``problem_id``): two modules are linked when their :func:`similarity` is at least
    ``threshold``; a module joins a family only when it is linked to every member (see
    :func:`kernelbook_lib.neardup_groups.link_families`), and a family is named by the smallest
    key among its members. The result does not depend on the order of the modules."""
    check_threshold(threshold)
    if len(keys) != len(codes):
        raise ValueError("keys and codes must have the same length")
    if len(set(keys)) != len(keys):
        raise ValueError("keys must be distinct (one module per key)")
    started = time.perf_counter()
    pool_stats: dict = {}
    forms, parsed = normalize_many(codes, workers, progress, pool_stats)
    normalized = time.perf_counter()
    family_of, grouping = families_of_forms(keys, forms, threshold, log)
    untraced = pool_stats.pop("untraced_reasons", {})
    stats = {
        "normalization": NORMALIZATION_VERSION,
        "threshold": threshold,
        "linkage": "complete",
        "operations_share": OPERATIONS_SHARE,
        "shingle_size": SHINGLE_SIZE,
        "operation_weight": OPERATION_WEIGHT,
        "num_perm": NUM_PERM,
        "lsh_bands": lsh_bands(operations_threshold(threshold)),
        "minhash": minhash_library(),
        **family_stats(family_of),
        **grouping,
        "unparsed_modules": parsed.count(False),
        "untraced_modules": sum(untraced.values()),
        "untraced_reasons": untraced,
        "normalize_s": round(normalized - started, 3),
        "wall_s": round(time.perf_counter() - started, 3),
        **pool_stats,
    }
    return FamilyResult(family_of=family_of, forms=forms, stats=stats)


def families_of_forms(
    keys: Sequence[str], forms: Sequence[str], threshold: float, log: Callable[[str], None] | None = None
) -> tuple[list[str], dict]:
    """The families of modules already normalised (``forms``, from :func:`normalize_many`),
    and what the grouping compared (see :func:`group_families`)."""
    check_threshold(threshold)
    # Modules with the same form are one family at once; only distinct forms are compared. A
    # module whose form is empty (imports and harness only) has nothing to compare: it stays alone.
    distinct, position = distinct_forms(forms)
    sigs = Signatures.of(distinct)
    compared = exact = 0
    edges: list[tuple[int, int, float]] = []
    for left, right, candidates in candidate_pairs(sigs, threshold):
        compared += candidates
        for i, j in zip(left.tolist(), right.tolist()):
            exact += 1
            value = similarity(sigs, i, sigs, j)
            if value >= threshold:
                edges.append((i, j, value))
    # The smallest key and the number of modules of each distinct form: the order of the
    # grouping (most modules around it first), independent of the input order.
    smallest: list[str] = [""] * len(distinct)
    weight = [0] * len(distinct)
    for key, pos in zip(keys, position):
        if pos >= 0:
            if not weight[pos] or key < smallest[pos]:
                smallest[pos] = key
            weight[pos] += 1
    family_of_form = link_families(len(distinct), edges, weight, smallest)
    if log:
        log(f"near-dup: {len(distinct):,} distinct forms, {compared:,} candidate pairs compared "
            f"({exact:,} exactly), {len(edges):,} linked")  # fmt: skip
    family_of = [family_of_form[pos] if pos >= 0 else key for key, pos in zip(keys, position)]
    walked = sum(sigs.walked)
    return family_of, {
        "distinct_forms": len(distinct),
        "distinct_forms_walked": walked,
        "pairs_compared": compared,
        "pairs_compared_exactly": exact,
        "pairs_confirmed": len(edges),
    }


# --- matching against reference items (decontamination) -------------------------------------


@dataclass
class Match:
    """The reference item (position) a module matches best, with the exact similarity."""

    item: int
    similarity: float


class ReferenceIndex:
    """Reference modules (a benchmark's items) to match other modules against, with the same
    normalisation, sets, similarity and threshold as the families."""

    def __init__(self, codes: Sequence[str], threshold: float = DEFAULT_NEAR_DUP_THRESHOLD, workers: int | None = None) -> None:
        check_threshold(threshold)
        self.threshold = threshold
        forms, _ = normalize_many(codes, workers)
        distinct, self.position = distinct_forms(forms)
        self.items_of: list[list[int]] = [[] for _ in distinct]  # items per distinct form, in order
        for item, pos in enumerate(self.position):
            if pos >= 0:
                self.items_of[pos].append(item)
        self.sigs = Signatures.of(distinct)
        self.index = self.sigs.lsh(threshold)

    def match(self, forms: Sequence[str]) -> tuple[list[Match | None], int]:
        """For each form, its best match among the references (highest similarity, then the
        first item), or None; and the number of candidate pairs compared."""
        distinct, position = distinct_forms(forms)
        query = Signatures.of(distinct)
        best: list[Match | None] = [None] * len(distinct)
        compared = 0
        if distinct and self.sigs.forms:
            for i, candidates in query.query(self.index):
                floor = query.estimate_floor(i, self.threshold)
                for ref in sorted(candidates):
                    compared += 1
                    if query.minhashes[i].jaccard(self.sigs.minhashes[ref]) < floor:
                        continue
                    value = similarity(query, i, self.sigs, ref)
                    if value >= self.threshold:
                        item = self.items_of[ref][0]
                        current = best[i]
                        if current is None or (value, -item) > (current.similarity, -current.item):
                            best[i] = Match(item, value)
        return [best[pos] if pos >= 0 else None for pos in position], compared


def form_digest(form: str) -> str:
    """A short stable id of a normalised form (for logs and tests)."""
    return hashlib.sha256(form.encode("utf-8")).hexdigest()[:16]

