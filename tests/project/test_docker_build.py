"""The image's ``pip install .`` works, checked without a Docker engine.

The Dockerfile copies parts of the repository into the image and runs ``pip install .``; when a
package that pyproject.toml lists is not copied (or is left out of the build context by
``.dockerignore``), the build fails, and no CI machine here can run ``docker build`` to notice.
So this test does what the builder does up to that line: it reads the ``COPY`` instructions
before ``RUN pip install .``, copies exactly those files (without what ``.dockerignore``
excludes) into a temporary image tree, and builds a wheel there with pip. The wheel must then
hold every package and package-data file pyproject.toml declares, and the console script.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path, PurePosixPath

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, args = line.partition(" ")
            found.append((op.upper(), args.strip()))
    return found


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regular expression (``*``, ``?``, ``**``)."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out)


def dockerignore(root: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """``(is an exception, pattern)`` of each line of ``.dockerignore``, in order."""
    path = root / ".dockerignore"
    rules = []
    for line in path.read_text().splitlines() if path.exists() else []:
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, _pattern(str(PurePosixPath(line.lstrip("!").strip("/"))))))
    return rules


def ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the build context leaves out ``relative``: the last rule matching it or one of
    its parent directories decides, as in Docker."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    verdict = False
    for negated, rule in rules:
        if any(rule.fullmatch(prefix) for prefix in prefixes):
            verdict = not negated
    return verdict


def copy_like_docker(root: Path, image: Path) -> Path:
    """Copy into ``image`` (the image's ``/``) what the COPY lines before ``RUN pip install .``
    copy; the working directory of that RUN line (where ``.`` is)."""
    rules = dockerignore(root)
    workdir = PurePosixPath("/")
    for op, args in instructions(DOCKERFILE.read_text()):
        if op == "WORKDIR":
            workdir = workdir / args
        elif op == "RUN" and re.search(r"\bpip install\b.*\s'?\.(\[[a-z,]+\])?'?(\s|$)", args):
            return image / workdir.relative_to("/")
        elif op in ("COPY", "ADD"):
            words = json.loads(args) if args.startswith("[") else shlex.split(args)
            assert not any(w.startswith("--from") for w in words), "multi-stage: extend this test"
            *sources, dest = [w for w in words if not w.startswith("--")]
            target = image / (workdir / dest).relative_to("/")
            into_dir = dest.endswith("/") or len(sources) > 1
            for source in sources:
                assert (root / source).exists(), f"COPY {source}: no such file"
                assert not ignored(source, rules), f"COPY {source}: left out by .dockerignore"
                if (root / source).is_dir():
                    for file in sorted((root / source).rglob("*")):
                        relative = file.relative_to(root).as_posix()
                        if file.is_file() and not ignored(relative, rules):
                            copied = target / file.relative_to(root / source)
                            copied.parent.mkdir(parents=True, exist_ok=True)
                            shutil.copy2(file, copied)
                else:
                    copied = target / Path(source).name if into_dir else target
                    copied.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(root / source, copied)
    raise AssertionError("the Dockerfile has no `RUN pip install .`")


def build_requirements_installed() -> bool:
    """Whether this environment satisfies ``[build-system] requires`` (then no isolation)."""
    for text in PYPROJECT["build-system"]["requires"]:
        requirement = Requirement(text)
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            return False
        if not requirement.specifier.contains(version, prereleases=True):
            return False
    return True


def test_dockerignore_patterns() -> None:
    rules = [(False, _pattern("**/__pycache__")), (False, _pattern("tests")),
             (True, _pattern("tests/keep.py"))]  # fmt: skip
    assert ignored("stream/__pycache__/x.pyc", rules) and ignored("__pycache__", rules)
    assert ignored("tests/unit/test_x.py", rules) and not ignored("tests/keep.py", rules)
    assert not ignored("stream/tests.py", rules) and not ignored("observability", rules)


def test_what_the_dockerfile_copies_is_what_pyproject_packages(tmp_path: Path) -> None:
    """Cheap and offline: every package pyproject.toml lists reaches the image."""
    app = copy_like_docker(ROOT, tmp_path / "image")
    assert (app / "pyproject.toml").exists() and (app / "README.md").exists()
    for package in PYPROJECT["tool"]["setuptools"]["packages"]:
        init = app / package.replace(".", "/") / "__init__.py"
        assert init.exists(), f"{package} is listed in pyproject.toml but not copied into the image"


@pytest.mark.slow
def test_a_wheel_builds_from_what_the_dockerfile_copies(tmp_path: Path) -> None:
    app = copy_like_docker(ROOT, tmp_path / "image")
    # As the image does (isolated: pip fetches setuptools from PyPI), unless this environment
    # already has the build requirements.
    isolation = ["--no-build-isolation"] if build_requirements_installed() else []
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
         "-q", *isolation, "-w", str(tmp_path / "dist"), str(app)],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("riverstream-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    setuptools = PYPROJECT["tool"]["setuptools"]
    for package in setuptools["packages"]:
        assert f"{package.replace('.', '/')}/__init__.py" in names, package
    for package, patterns in setuptools["package-data"].items():
        base = ROOT / package.replace(".", "/")
        for pattern in patterns:
            files = [f for f in base.glob(pattern) if f.is_file() and "__pycache__" not in f.parts]
            assert files, f"{package}: {pattern} matches nothing"
            for file in files:
                assert file.relative_to(ROOT).as_posix() in names, f"{file} not in the wheel"
    for extension in setuptools["ext-modules"]:  # compiled here (the image installs a compiler)
        stem = extension["name"].replace(".", "/")
        assert any(n.startswith(stem + ".") and n.endswith(".so") for n in names), stem
    [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "riverstream = stream.cli.main:main" in scripts
