"""The pipeline's default values and choices, in a module that imports nothing heavy.

:mod:`kernelbook_lib.params` (and through it the ``kernelbook`` CLI, whose ``--help`` must not
wait for polars or numpy) declares every option from these; the stage modules re-export them.
"""

from __future__ import annotations

from typing import Literal

#: The eval rollouts ``curate`` reads by default.
DEFAULT_SOURCE = "siro1/kernelbook-glm4-evals"
SplitName = Literal["train", "validation", "all"]

DEFAULT_THRESHOLD = 0.85
DEFAULT_SEED = 42
DEFAULT_VAL_FRACTION = 0.1
GroupBy = Literal["problem_id", "module_name", "family_id"]

#: The default similarity (exact Jaccard of shingle sets) at which two modules are one family.
DEFAULT_NEAR_DUP_THRESHOLD = 0.7

#: The kernel screen (kernelbook_lib.screening): standard rejects solutions that are not Triton
#: kernels and flags partial conversions; strict also rejects partial, fallback and library
#: flags; off runs no screen stage.
ScreenMode = Literal["standard", "strict", "off"]
DEFAULT_SCREEN: ScreenMode = "standard"
