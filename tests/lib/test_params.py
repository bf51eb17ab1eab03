"""One model per flow declares its parameters; the preflight checks them, .env and the settings."""

from __future__ import annotations

import inspect
import typing

import pytest

from kernelbook_lib import params, prompt_dataset
from kernelbook_lib.errors import SourceUnavailableError, UserError


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"val_fraction": 1.5}, "--val-fraction 1.5: input should be less than 1"),
        ({"val_fraction": 0.0}, "--val-fraction 0.0: input should be greater than 0"),
        ({"threshold": 2}, "--threshold 2: input should be less than or equal to 1"),
        ({"threshold": -0.1}, "--threshold -0.1: input should be greater than or equal to 0"),
        ({"limit": 0}, "--limit 0: input should be greater than or equal to 1"),
        ({"max_judge_failure_rate": 1.5}, "--max-judge-failure-rate 1.5"),
        ({"split": "test"}, "--split test: input should be 'train', 'validation' or 'all'"),
        ({"judge": "gpt"}, "--judge gpt: input should be 'auto', 'static' or 'llm'"),
        ({"group_by": "name"}, "--group-by name"),
        ({"bogus": 1}, "unknown parameter 'bogus'"),
    ],
)
def test_each_bad_curate_option_is_named_as_the_cli_spells_it(values, message):
    with pytest.raises(UserError) as err:
        params.validate_params("curate", {"source": "sample", **values})
    assert message in str(err.value) and err.value.exit_code == 2


def test_every_bad_option_is_reported_at_once():
    with pytest.raises(UserError) as err:
        params.validate_params("curate", {"source": "sample", "threshold": 2, "val_fraction": 1.5})
    assert "--threshold" in str(err.value) and "--val-fraction" in str(err.value)


def test_out_that_is_a_file_and_a_missing_path_source(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UserError, match="--out .*: exists and is not a folder"):
        params.validate_params("generate-prompts", {"source": "sample", "out": str(target)})
    with pytest.raises(SourceUnavailableError, match="no such file or folder"):
        params.validate_params("re-evaluate", {"source": "data/sub/x"})


def test_dask_options():
    with pytest.raises(UserError, match="--dask-address needs --task-runner dask"):
        params.validate_params("task-runner", {"dask_address": "tcp://10.0.0.5:8786"})
    with pytest.raises(UserError, match="is not a Dask scheduler address"):
        params.validate_params("re-evaluate", {"source": "sample", "task_runner": "dask", "dask_address": "http://x y"})
    assert params.validate_params("task-runner", {"task_runner": "dask", "dask_address": "tcp://10.0.0.5:8786"})


@pytest.mark.parametrize(
    ("pipeline", "flow_module", "flow_name"),
    [("curate", "flows.curate", "curate"), ("re-evaluate", "flows.reevaluate", "reevaluate"),
     ("generate-prompts", "flows.generate_prompts", "generate_prompts"), ("analyze", "flows.analyze", "analyze"),
     ("publish", "flows.publish", "publish")],
)
def test_each_flow_takes_its_model_as_its_one_parameter(pipeline, flow_module, flow_name):
    """The model is the one declaration: the flow's only parameter is ``params`` of that model
    (so a deployment's parameters, the UI's form and the CLI are checked the same way), and its
    default is the model's defaults."""
    import importlib

    flow = getattr(importlib.import_module(flow_module), flow_name)
    signature = inspect.signature(flow.fn)
    model = params.MODELS[pipeline]
    assert list(signature.parameters) == (["params", "run"] if pipeline == "analyze" else ["params"])  # run: curate's summary
    assert typing.get_type_hints(flow.fn)["params"] is model
    assert signature.parameters["params"].default == model()
    schema = flow.parameters.model_dump()  # what Prefect sends a deployment (the run form)
    assert schema["required"] == [] and set(schema["definitions"][model.__name__]["properties"]) == set(model.model_fields)


def test_generate_default_source_is_prompt_gens():
    assert params.KERNELBOOK_SOURCE == prompt_dataset.DEFAULT_SOURCE


def test_preflight_checks_the_key_for_the_llm_choices(monkeypatch):
    monkeypatch.delenv("PRIME_API_KEY", raising=False)
    with pytest.raises(UserError, match="--judge llm needs an API key"):
        params.preflight("curate", {"source": "sample", "judge": "llm"})
    with pytest.raises(UserError, match="--backend llm needs an API key"):
        params.preflight("generate-prompts", {"source": "sample", "backend": "llm"})
    assert params.preflight("curate", {"source": "sample", "judge": "auto"}).warnings == ()


def test_preflight_checks_the_settings(monkeypatch):
    monkeypatch.setenv("LLM_TIMEOUT_S", "-1")
    with pytest.raises(UserError, match="LLM_TIMEOUT_S"):
        params.preflight("curate", {"source": "sample"})


def test_no_wait_needs_batch_mode_from_the_option_or_the_setting(monkeypatch):
    monkeypatch.delenv("LLM_MODE", raising=False)
    for pipeline in ("curate", "re-evaluate", "generate-prompts"):
        assert params.validate_params(pipeline, {"source": "sample"}).llm_mode is None  # unset: LLM_MODE decides
        with pytest.raises(UserError, match="--no-wait needs batch mode"):
            params.preflight(pipeline, {"source": "sample", "no_wait": True})
        params.preflight(pipeline, {"source": "sample", "no_wait": True, "llm_mode": "batch"})
        with pytest.raises(UserError, match="--llm-mode"):
            params.validate_params(pipeline, {"source": "sample", "llm_mode": "offline"})
    monkeypatch.setenv("LLM_MODE", "batch")
    params.preflight("curate", {"source": "sample", "no_wait": True})
    with pytest.raises(UserError, match="--no-wait needs batch mode"):
        params.preflight("curate", {"source": "sample", "no_wait": True, "llm_mode": "online"})


#: The model of each flow a deployment may name (a deployment of another flow fails the test below).
DEPLOYABLE = {
    "flows/curate.py:curate": "curate",
    "flows/generate_prompts.py:generate_prompts": "generate-prompts",
    "flows/reevaluate.py:reevaluate": "re-evaluate",
}


def test_every_deployment_in_prefect_yaml_passes_its_flows_model(tmp_path, monkeypatch):
    """``prefect deploy`` accepts any parameters; a misspelt name or a bad value would only fail
    at the first scheduled run. Checked here against the one declaration of the flow's parameters."""
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    spec = yaml.safe_load((root / "prefect.yaml").read_text())
    monkeypatch.chdir(tmp_path)  # relative paths (out=outputs) as a fresh clone sees them
    assert spec["deployments"]
    for deployment in spec["deployments"]:
        pipeline = DEPLOYABLE.get(deployment["entrypoint"])
        assert pipeline, f"prefect.yaml deploys {deployment['entrypoint']}, which has no parameter model"
        given = deployment.get("parameters") or {}
        assert set(given) <= {"params"}, f"{deployment['name']}: a flow's one parameter is `params`, not {sorted(given)}"
        params.validate_params(pipeline, given.get("params") or {})
