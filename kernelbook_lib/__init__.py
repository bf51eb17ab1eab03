"""kernelbook-curator: all the pipeline's logic, testable without an orchestrator.

This package never imports ``prefect``: orchestration lives in ``tasks/`` and ``flows/``.
"""

__version__ = "0.1.0"
