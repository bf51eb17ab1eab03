"""The publish steps as Prefect tasks: orchestration only (names, retries, cache policies).

Cache policy: ``NO_CACHE`` on every task, deliberately. The plan reads files that the next
curate run rewrites under the same path, so a cache keyed on the path would hand back a stale
plan; and a cached push would skip an upload the user asked for. Results are not persisted
either (the plan carries the regenerated card; nothing here is worth storing).

Only the push talks to the network, so only it retries, and only on transient failures (the
Hub could not be reached, did not answer in time, or answered 5xx). A refusal, a missing token,
a 401/403, or a commit made but not tagged (a retry would commit again) is final. The token is
found inside the push task (HF_TOKEN from the settings, else huggingface_hub's saved login): it
is never a parameter or result.
"""

from __future__ import annotations

import os

from prefect import task
from prefect.cache_policies import NO_CACHE

from kernelbook_lib import hub
from kernelbook_lib.settings import load_settings

LOCAL_TASK = dict(cache_policy=NO_CACHE, persist_result=False)


def _retry_if_transient(task, task_run, state) -> bool:
    """Retry the push only when trying again may work (unreachable Hub, 5xx)."""
    try:
        state.result()
    except hub.PublishError as exc:
        return exc.transient
    except Exception:  # noqa: BLE001 - any other failure is final: not retried
        return False
    return False


@task(name="resolve-repos", **LOCAL_TASK)
def resolve_repos(filtered_repo: str | None, unique_repo: str | None, synthetic_repo: str | None) -> dict[str, str | None]:
    """Repo ids from the parameters, else from HF_FILTERED_REPO / HF_UNIQUE_REPO / HF_SYNTHETIC_REPO."""
    settings = load_settings()
    return {
        "filtered": filtered_repo or settings.hf_filtered_repo,
        "unique": unique_repo or settings.hf_unique_repo,
        "synthetic": synthetic_repo or settings.hf_synthetic_repo,
    }


@task(name="plan-publish", **LOCAL_TASK)
def plan_publish(input_dir: str, repos: dict[str, str | None], single_repo: str | None = None) -> list[hub.PublishPlanItem]:
    return hub.plan_publish(input_dir, repos, single_repo)


@task(name="check-publishable", **LOCAL_TASK)
def check_publishable(plan: list[hub.PublishPlanItem]) -> list[hub.PublishPlanItem]:
    return hub.check_publishable(plan)


@task(name="push-dataset", retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_if_transient, **LOCAL_TASK)
def push_dataset(item: hub.PublishPlanItem, private: bool) -> dict:
    """Create the dataset repo, upload the planned files in one commit and tag it."""
    token = hub.find_token(load_settings().hf_token)
    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now: huggingface_hub reads it only at import
    [result] = hub.push([item], token, private, endpoint=endpoint)
    return result.as_dict()
