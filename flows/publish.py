"""The ``publish`` flow: validate the output datasets and upload them to the Hugging Face Hub.

By default a dry run: it logs, per dataset, the repo id, the files with their sizes and the
row counts that would be uploaded, and uploads nothing. With ``push=True`` it refuses any
dataset that fails validation, then creates each named dataset repo, uploads it in one
commit and tags that commit. ``single_repo`` publishes every dataset as a config of one repo.
Run it with ``kernelbook publish`` (``--help``).
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from kernelbook_lib.hub import format_plan
from kernelbook_lib.params import as_params, PublishParams
from tasks.artifacts import push_artifact
from tasks.publish import check_publishable, plan_publish, push_dataset, resolve_repos


@flow(name="publish", log_prints=False, validate_parameters=False)  # params: checked by as_params
def publish(params: PublishParams = PublishParams()) -> dict:
    """Publish ``input``/filtered, /unique and /synthetic to their Hub dataset repos.

    Repo ids default to HF_FILTERED_REPO, HF_UNIQUE_REPO and HF_SYNTHETIC_REPO; a dataset
    without one is skipped. ``single_repo``: all of them as configs of that one repo instead.
    The token (HF_TOKEN, or a saved ``hf auth login``) is read inside the push task.
    """
    params = as_params("publish", params)
    input, push, private, single_repo = params.input, params.push, params.private, params.single_repo
    filtered_repo, unique_repo, synthetic_repo = params.filtered_repo, params.unique_repo, params.synthetic_repo
    logger = get_run_logger()
    if single_repo:  # a --*-repo passed with it is refused by the plan; HF_*_REPO settings are not used
        repos = {"filtered": filtered_repo, "unique": unique_repo, "synthetic": synthetic_repo}
    else:
        repos = resolve_repos(filtered_repo, unique_repo, synthetic_repo)
    plan = plan_publish(input, repos, single_repo)
    # Logged by the flow: task-run INFO lines are hidden by default (tasks/runtime.py).
    logger.info(format_plan(plan, dry_run=not push))
    result = {"input": input, "pushed": False, "private": private, "datasets": [item.as_dict() for item in plan], "commits": []}
    if not push:
        return result
    to_push = check_publishable(plan)
    for item in to_push:
        commit = push_dataset(item, private)
        result["commits"].append(commit)
        push_artifact(commit)
        logger.info(
            f"{item.kind}: published {', '.join(commit['files'])} to {'private' if private else 'public'} "
            f"dataset {commit['repo_id']} in one commit ({commit['commit_url']}), tagged {commit['tag']}"
        )
    result["pushed"] = True
    return result

