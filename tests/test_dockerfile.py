"""The GPU image's Dockerfile, read with Docker's own parser, agrees with pyproject.toml: same
entry point, the GPU extra (onnxruntime-gpu, never the CPU package), the torch requirement, what
the build needs copied, a CUDA runtime base and a non-root user. (No Docker engine runs here;
README says how to build and run it with the NVIDIA container toolkit.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, tuple[str, ...]]]:
    import dockerfile

    return [
        (c.cmd.upper(), tuple(c.value)) for c in dockerfile.parse_file(str(ROOT / "Dockerfile"))
    ]


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def runs(instructions) -> list[list[str]]:
    return [shlex.split(value[0]) for cmd, value in instructions if cmd == "RUN"]


def pip_installs(instructions) -> list[list[str]]:
    return [
        args[args.index("install") + 1 :]
        for args in runs(instructions)
        if args[:2] == ["pip", "install"]
    ]


def test_cuda_runtime_base(instructions):
    (base,) = [value[0] for cmd, value in instructions if cmd == "FROM"]
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-(cudnn-)?runtime-ubuntu[\d.]+", base), base


def test_entry_point_is_the_console_script(instructions, project):
    (entry,) = [value for cmd, value in instructions if cmd == "ENTRYPOINT"]
    assert entry == ("revise",) and project["scripts"]["revise"] == "revise.cli:main"


def test_installs_the_gpu_extra_never_the_cpu_onnxruntime(instructions, project):
    extras = project["optional-dependencies"]
    assert any(r.startswith("onnxruntime-gpu") for r in extras["gpu"])
    assert not any(re.match(r"onnxruntime([<>=!~ ]|$)", r) for r in extras["gpu"])
    installs = [arg for args in pip_installs(instructions) for arg in args]
    assert "/src[gpu]" in installs
    assert not any("[cpu]" in arg or re.match(r"onnxruntime([<>=!~]|$)", arg) for arg in installs)
    assert not any(re.match(r"onnxruntime", r) for r in project["dependencies"])


def test_cuda_torch_first_with_the_projects_requirement(instructions, project):
    torch_install = pip_installs(instructions)[0]  # before the project, so pip keeps it
    (torch_spec,) = [r for r in project["dependencies"] if r.startswith("torch")]
    assert torch_spec in torch_install
    index = torch_install[torch_install.index("--index-url") + 1]
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", index)


def test_copies_what_the_build_needs(instructions, project):
    copied = {Path(src).name for cmd, value in instructions if cmd == "COPY" for src in value[:-1]}
    assert {"pyproject.toml", project["readme"], "revise"} <= copied


def test_runs_as_a_non_root_user_after_installing(instructions):
    cmds = [cmd for cmd, _ in instructions]
    users = [value[0] for cmd, value in instructions if cmd == "USER"]
    assert users and users[-1] not in ("root", "0")
    last_run = max(i for i, cmd in enumerate(cmds) if cmd == "RUN")
    assert cmds.index("USER") > last_run
    created = [args for args in runs(instructions) if args and args[0] == "useradd"]
    assert created and created[0][-1] == users[-1]
    # the UID must be free: Ubuntu 24.04 bases hold 1000 for their "ubuntu" user
    uid = created[0][created[0].index("--uid") + 1]
    commands = [" ".join(args) for args in runs(instructions)]
    useradd_at = next(i for i, c in enumerate(commands) if c.startswith("useradd"))
    assert uid != "1000" or any("userdel" in c and "ubuntu" in c for c in commands[:useradd_at]), (
        "UID 1000 belongs to the base image's ubuntu user"
    )


def test_installs_onnx2torch_without_its_dependencies(instructions):
    """--model x.onnx needs onnx2torch; its torchvision requirement would replace CUDA torch."""
    (install,) = [
        args for args in pip_installs(instructions) if any("onnx2torch" in a for a in args)
    ]
    assert "--no-deps" in install


def test_has_a_compiler_for_torch_compile(instructions):
    apt = [args for args in runs(instructions) if "apt-get" in args and "install" in args]
    packages = {arg for args in apt for arg in args}
    assert {"gcc", "python3-dev"} <= packages
