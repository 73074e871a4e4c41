"""The README's Python examples run as written: in a folder holding what they name (a trained run
at runs/demo/lrt, its export at exports/demo-lrt, a local lm-eval task in my_tasks/); an example
of an optional integration is skipped where that extra is not installed."""

import importlib.util
import pathlib
import re

import pytest

from helpers import tiny_train_args, write_lm_eval_task
from lrt.cli import main

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
EXTRAS = {"transformers": "transformers", "lm_eval": "lm_eval", "openai": "openai"}
SERVER = "127.0.0.1:8000"  # where the serving example talks to `lrt serve runs/demo/lrt`


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("readme")
    assert main(tiny_train_args(root / "runs/demo/lrt")) == 0
    if importlib.util.find_spec("transformers"):
        assert main(["export", "hf", str(root / "runs/demo/lrt"), str(root / "exports/demo-lrt")]) == 0
    write_lm_eval_task(root / "my_tasks", "my_task")
    return root


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(code, folder, monkeypatch):
    for module in EXTRAS:
        if re.search(rf"^\s*(import|from) {module}\b", code, flags=re.M):
            pytest.importorskip(module)
    monkeypatch.chdir(folder)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if SERVER not in code:
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})
        return
    pytest.importorskip("fastapi")
    from lrt.integrations.serve import BackgroundServer, served_run
    from lrt.train.checkpoint import load_run

    # the run served as the README serves it, on a free port rather than 8000
    with BackgroundServer(served_run(load_run(folder / "runs/demo/lrt", "cpu"))) as url:
        code = code.replace(f"http://{SERVER}", url)
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})


def test_readme_has_python_examples():
    assert BLOCKS
