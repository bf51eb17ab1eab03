"""Families from linked pairs (``neardup-v2``): a grouping that cannot chain.

``neardup-v1`` made the connected components of the linked pairs its families, so A ~ B ~ C put
A and C in one family however far apart they were: on real KernelBook modules, chains of MLPs
one layer deeper at each step made a family of 197 modules. :func:`link_families` puts a form
into a family only when it is linked to every member already in it (complete linkage), taking
the forms in a fixed order: most modules within reach (its own and its neighbours') first, then
the smallest key. A form linked to several families joins the one it is most similar to on
average. The order depends only on the forms, the links and the keys, never on the input order,
so the families do not either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class FamilyResult:
    """Families of a set of modules: ``family_of[i]`` is the family id of module ``i`` and
    ``forms[i]`` its normalised form ('' when it has none, None when not normalised)."""

    family_of: list[str]
    forms: list[str] | None
    stats: dict = field(default_factory=dict)


def family_stats(family_of: Sequence[str]) -> dict:
    """Problems, families, problems in a family of more than one, the largest family."""
    sizes: dict[str, int] = {}
    for fam in family_of:
        sizes[fam] = sizes.get(fam, 0) + 1
    largest_id, largest = min(sizes.items(), key=lambda kv: (-kv[1], kv[0])) if sizes else (None, 0)
    return {
        "problems": len(family_of),
        "families": len(sizes),
        "problems_in_shared_families": sum(n for n in sizes.values() if n > 1),
        "shared_families": sum(1 for n in sizes.values() if n > 1),
        "largest_family": largest,
        "largest_family_id": largest_id if largest > 1 else None,
    }


def singleton_families(keys: Sequence[str]) -> FamilyResult:
    """Every module its own family (``--no-near-dup``): the family id is the key itself."""
    return FamilyResult(family_of=list(keys), forms=None, stats=family_stats(list(keys)))


def link_families(
    n: int,
    edges: Sequence[tuple[int, int, float]],
    weight: Sequence[int],
    smallest: Sequence[str],
    linkage: str = "complete",
) -> list[str]:
    """The family id of each of ``n`` forms, given the linked pairs ``edges`` (``(i, j,
    similarity)``), the number of modules of each form (``weight``) and the smallest key of each
    (``smallest``): the smallest key among the family's members. ``linkage``: ``complete`` (a
    form joins a family when it is linked to every member) or ``star`` (when it is linked to
    the family's first form, its centre: members may then be two links apart, never more)."""
    if linkage not in ("complete", "star"):
        raise ValueError(f"linkage must be 'complete' or 'star', not {linkage!r}")
    near: list[dict[int, float]] = [{} for _ in range(n)]
    for i, j, value in edges:
        if i != j:
            near[i][j] = near[j][i] = max(value, near[i].get(j, 0.0))
    reach = [weight[i] + sum(weight[j] for j in near[i]) for i in range(n)]
    order = sorted(range(n), key=lambda i: (-reach[i], smallest[i]))
    family = [-1] * n
    members: list[list[int]] = []
    for v in order:
        if family[v] >= 0:
            continue
        if linkage == "star":
            f = len(members)
            members.append([v])
            family[v] = f
            for u in sorted(near[v], key=lambda u: (-reach[u], smallest[u])):
                if family[u] < 0:
                    family[u] = f
                    members[f].append(u)
            continue
        best, best_score = -1, -1.0
        for f in sorted({family[u] for u in near[v] if family[u] >= 0}):
            group = members[f]
            if all(u in near[v] for u in group):
                score = sum(near[v][u] for u in group) / len(group)
                if score > best_score:
                    best, best_score = f, score
        if best < 0:
            best = len(members)
            members.append([])
        family[v] = best
        members[best].append(v)
    names = [min(smallest[u] for u in group) for group in members]
    return [names[family[i]] for i in range(n)]
