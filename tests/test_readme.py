"""The README's commands work as written.

Every command in a README code block is checked against the project: each ``kedro run`` is
parsed by Kedro's own command line and its pipeline, environment, settings, tags, nodes,
namespaces and load versions must exist. Those that need nothing from outside the project
(no download, no user file, no cluster, no GPU) are then run, as written, in a fresh
checkout where the README's set-up has been done (its ``.venv``, activated), with tiny
settings in ``conf/local``: the first such command of each block (the others vary it).
"""

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from directclr.training.config import merge_settings
from tests.conftest import REPO
from tests.test_run import TINY_TRAINING as RUN_TINY_TRAINING

README = REPO / "README.md"

# Commands that cannot run here, each with the reason: they are parsed and checked only.
NOT_RUN = {
    "download=true": "downloads a dataset",
    "source=stl10": "needs STL-10 (a download)",
    "source=cifar10": "needs CIFAR-10 (a download)",
    "source=image_folder": "needs the user's image folder",
    "analyze.checkpoint=": "needs the user's checkpoint file",
    "<version>": "names a version of the user's own run",
    "--load-versions": "names versions of the user's own runs",
    "devices=4": "starts 4 training processes",
    "torchrun": "starts several processes (a GPU machine)",
    "srun": "runs on a SLURM cluster",
    "scontrol": "runs on a SLURM cluster",
    "jupyter": "opens an interactive notebook server",
    "kedro viz run": "opens a browser (kedro viz build is run instead)",
    "--env=paper": "the paper's full settings: ImageNet on GPUs, or the toys for minutes "
    "(tests/test_paper_env.py and the toys' tests run them shortened)",
    "--pipeline=compare": "a full comparison (minutes; tests/test_compare.py runs it shortened)",
    "--pipeline=projector_ablation": "a full comparison (minutes)",
    "--pipeline=d0_sweep": "a full comparison (minutes)",
    "--pipeline=sweep": "a full comparison (minutes)",
    "--pipeline=selection": "ranks the runs of a sweep run before it",
    "backbone=resnet18": "a ResNet-18 on CPU (minutes)",
    "pip install": "the README's set-up, which CI runs",
}


def readme_blocks() -> list[list[str]]:
    """The commands of each of the README's shell blocks, continuation lines joined,
    comments and blank lines dropped."""
    blocks = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", README.read_text(), re.S):
        text = block.replace("\\\n", " ")
        lines = (re.sub(r"\s+#.*$", "", line).strip() for line in text.splitlines())
        blocks.append([line for line in lines if line and not line.startswith("#")])
    return blocks


def readme_commands() -> list[str]:
    return [command for block in readme_blocks() for command in block]


def kedro_arguments(command: str) -> list[str] | None:
    """The arguments after ``kedro`` (also under ``torchrun ... -m kedro``), None for a
    command that is not Kedro's."""
    words = shlex.split(command)
    for index, word in enumerate(words):
        if Path(word).name == "kedro":
            return words[index + 1 :]
    return None


def not_run_because(command: str) -> str | None:
    return next((why for key, why in NOT_RUN.items() if key in command), None)


def test_the_readme_reaches_its_environment_one_way():
    """The first block sets up and runs with the environment's own paths; every later
    command assumes it is activated, as the README says right after it."""
    commands = readme_commands()
    first = [c for c in commands if "python3 -m venv .venv" in c]
    assert len(first) == 2 and all(".venv/bin/" in c for c in first)
    assert "source .venv/bin/activate" in README.read_text().split("## ")[0]
    later = [c for c in commands if c not in first and c != "source .venv/bin/activate"]
    assert not [c for c in later if ".venv/bin/" in c]


def test_every_kedro_command_in_the_readme_names_what_exists():
    """Kedro's own parser reads each ``kedro run``; its pipeline, environment, settings,
    tags, nodes, namespaces and the datasets it loads versions of must exist."""
    from kedro.config import OmegaConfigLoader
    from kedro.framework.cli.project import run as run_command
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from directclr.framework.parameters import (
        catalog_text,
        check_known_settings,
        known_settings,
    )

    bootstrap_project(REPO)
    from directclr.pipeline_registry import register_pipelines

    pipelines = register_pipelines()
    conf = REPO / "conf"
    known = {}
    checked = 0
    for command in readme_commands():
        arguments = kedro_arguments(command)
        if not arguments or arguments[0] != "run":
            continue
        options = run_command.make_context("run", arguments[1:]).params
        name = options["pipeline"] or "__default__"
        assert name in pipelines, command
        env = options["env"] or "local"
        assert (conf / env).is_dir(), command
        if env not in known:
            loader = OmegaConfigLoader(str(conf), base_env="base", default_run_env=env)
            known[env] = known_settings(loader["parameters"], catalog_text(conf, ["base", env]))
        check_known_settings(options["params"] or {}, known[env])
        chosen = pipelines[name].filter(
            tags=options["tags"] or None,
            from_nodes=options["from_nodes"] or None,
            to_nodes=options["to_nodes"] or None,
            node_names=options["node_names"] or None,
            node_namespaces=options["namespaces"] or None,
        )
        assert chosen.nodes, command
        if options["load_versions"]:
            with KedroSession.create(project_path=REPO) as session:
                catalog = session.load_context().catalog
            for dataset in options["load_versions"]:
                assert dataset in catalog, (command, dataset)
        checked += 1
    assert checked >= 30


def test_a_misspelled_setting_in_a_command_would_be_caught():
    from directclr.errors import BadSettingError
    from directclr.framework.parameters import check_known_settings

    with pytest.raises(BadSettingError):
        check_known_settings({"pretraining": {"epoch": 5}}, {"pretraining", "pretraining.epochs"})


TINY_TRAINING = {**RUN_TINY_TRAINING, "rank_every": 100, "lidar_samples": 0}
TINY = {
    "pretraining": TINY_TRAINING,
    "linear_eval": {"max_iter": 300},
    "toy_strong_augmentation": {"steps": 40, "record_every": 20, "theory_every": 20,
                                "batch_size": 32, "theory_batches": 8,
                                "noise_levels": [0.01, 1.5]},
    "toy_implicit_regularization": {"steps": 40, "record_every": 20, "batch_size": 32},
}  # fmt: skip


def fresh_checkout(target: Path) -> Path:
    """The project's files as git has them (a fresh clone of this tree), the README's
    ``.venv`` in place, and tiny settings in ``conf/local`` (whole sections: Kedro's
    environments replace a section, they do not merge into it)."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.splitlines()  # fmt: skip
    for name in files:
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    (target / ".venv").symlink_to(REPO / ".venv")
    base = {}
    for path in sorted((target / "conf" / "base").glob("parameters*.yml")):
        base |= yaml.safe_load(path.read_text()) or {}
    local = {section: merge_settings(base[section], TINY[section]) for section in TINY}
    (target / "conf" / "local" / "parameters_tiny.yml").write_text(yaml.safe_dump(local))
    return target


def _environment(checkout: Path) -> dict[str, str]:
    """What ``source .venv/bin/activate`` sets."""
    env = dict(os.environ)
    env["VIRTUAL_ENV"] = str(checkout / ".venv")
    env["PATH"] = f"{checkout / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
    env.pop("PYTHONPATH", None)
    env["DIRECTCLR_TRACKING"] = "on"  # as a user has it: kedro mlflow ui shows the runs
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serves(command: str, checkout: Path, env: dict[str, str]) -> None:
    """Start a UI command, wait until it answers over HTTP, stop it."""
    port = _free_port()
    process = subprocess.Popen(
        [*shlex.split(command), "--port", str(port)], cwd=checkout, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert process.poll() is None, process.stdout.read().decode()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as page:
                    assert page.status == 200
                    return
            except OSError:
                time.sleep(1)
        pytest.fail(f"{command} did not answer in 120 s")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def _check_the_log(log: str) -> None:
    """Piped, a run logs one line per record (nothing cut at 80 columns), without advice
    about things the project does not do, or messages that are not true."""
    saving = [line for line in log.splitlines() if "Saving data to" in line]
    assert saving and all(line.endswith("(kedro.io.data_catalog)") for line in saving)
    assert "Add type hints to the `predict` method" not in log
    assert "'tracking_uri' key in mlflow.yml is relative" not in log


@pytest.mark.slow
def test_the_readme_commands_run_as_written_in_a_fresh_checkout(tmp_path):
    checkout = fresh_checkout(tmp_path / "directclr")
    env = _environment(checkout)
    ran = []
    for block in readme_blocks():
        # Each block's first command that needs nothing from outside; the rest of the block
        # are variations of it, each parsed and checked by the test above.
        runnable = [command for command in block if not not_run_because(command)]
        if not runnable:
            continue
        command = runnable[0]
        if command.startswith("kedro mlflow ui"):
            _serves(command, checkout, env)
        else:
            done = subprocess.run(["bash", "-c", command], cwd=checkout, env=env,
                                  capture_output=True, text=True, timeout=600)  # fmt: skip
            assert done.returncode == 0, f"{command}\n{(done.stdout + done.stderr)[-4000:]}"
            if command.startswith("kedro run"):
                _check_the_log(done.stdout + done.stderr)
        ran.append(command)
    assert sys.executable  # the tests' interpreter is the README's .venv's
    assert len(ran) >= 6, ran
