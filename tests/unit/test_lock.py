"""The install is locked: requirements.lock pins every package (with its files' hashes) that
pyproject.toml asks for, `make` installs from it with --require-hashes, and the environment this suite
runs in holds exactly those versions (CI's fresh clone builds it with `make test`). The image's lock
(deploy/image.lock) pins the same versions."""

from __future__ import annotations

import importlib.metadata as metadata
import re
import tomllib
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
IMAGE_LOCK = ROOT / "deploy" / "image.lock"
INSTALLER_LOCK = ROOT / "deploy" / "installer.lock"


def _pins(lock: Path = LOCK) -> dict[str, tuple[str, Marker | None, list[str]]]:
    """name -> (version, marker, hashes), from the lock's logical lines (continuations joined)."""
    text = re.sub(r"\\\n", " ", lock.read_text())
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement, *hashes = (part.strip() for part in line.split("--hash="))
        name_version, _, marker = requirement.partition(";")
        name, _, version = name_version.strip().partition("==")
        assert version, f"{lock.name}: {line[:80]!r} is not an exact pin"
        pins[canonicalize_name(name)] = (version, Marker(marker) if marker.strip() else None, hashes)
    return pins


def test_every_pin_is_exact_and_hashed() -> None:
    for lock in (LOCK, IMAGE_LOCK):
        pins = _pins(lock)
        assert len(pins) > 50, len(pins)
        unhashed = [name for name, (_, _, hashes) in pins.items()
                    if not hashes or not all(h.startswith("sha256:") for h in hashes)]
        assert not unhashed, f"{lock.name}: pins without sha256 hashes: {unhashed}"


def _declared(extras: set[str]) -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"],
            *(r for extra in sorted(extras) for r in project["optional-dependencies"][extra])]


def _uncovered(declared: list[str],
               pins: dict[str, tuple[str, Marker | None, list[str]]]) -> tuple[list[str], list[str]]:
    missing, outside = [], []
    for raw in declared:
        requirement = Requirement(raw)
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            missing.append(raw)
        elif not requirement.specifier.contains(pin[0], prereleases=True):
            outside.append(f"{raw} (locked {pin[0]})")
    return missing, outside


def test_the_lock_covers_every_dependency_pyproject_declares() -> None:
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    missing, outside = _uncovered(_declared(extras - {"gpu"}), _pins())  # cuDF: on GPU machines, by hand
    assert not missing and not outside, \
        f"run `make lock`: not locked {missing}; lock outside the range {outside}"


def test_the_image_lock_covers_the_images_extras_at_the_versions_the_suite_runs() -> None:
    image, tested = _pins(IMAGE_LOCK), _pins()
    missing, outside = _uncovered(_declared({"postgres", "snowflake"}), image)
    assert not missing and not outside, \
        f"run `make lock`: not locked {missing}; lock outside the range {outside}"
    differ = {name: (pin[0], tested.get(name, ("absent",))[0]) for name, pin in image.items()
              if tested.get(name, ("absent",))[0] != pin[0]}
    assert not differ, \
        f"deploy/image.lock differs from requirements.lock (image, tested): {differ}; run `make lock`"


def test_this_environment_is_the_lock() -> None:
    """Every pin that applies to this platform is installed at exactly its version."""
    wrong = []
    for name, (version, marker, _) in _pins().items():
        if marker is not None and not marker.evaluate():
            continue
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            wrong.append(f"{name}: locked {version}, installed {installed}")
    assert not wrong, ("the suite runs in an environment that is not requirements.lock "
                       "(`make test` installs it): " + "; ".join(wrong))


def test_make_installs_the_pinned_installer_then_the_lock_with_hashes_and_the_project_without_dependencies(
) -> None:
    makefile = (ROOT / "Makefile").read_text()
    installer = makefile.index("--require-hashes -r $(INSTALLER_LOCK)")
    assert installer < makefile.index("--require-hashes -r requirements.lock"), "the installer comes first"
    assert "--no-deps --no-build-isolation -e ." in makefile
    assert re.search(r"^\$\(STAMP\): pyproject.toml requirements.lock "
                     r"\$\(INSTALLER_LOCK\)", makefile, re.M), \
        "a new lock or installer reinstalls"
    build = (ROOT / "tests" / "airflow_env" / "build.sh").read_text()
    assert build.index('-r "$INSTALLER"') < build.index('-r "$REQ"'), \
        ".venv-airflow is built with the pinned installer"


def test_the_installer_lock_pins_the_makefiles_installer_and_this_environment_runs_it() -> None:
    """Whatever pip the interpreter bundled, `make` replaced it with the pinned one: the outcome of an
    install does not depend on the machine's Python (.ci/fresh-envs builds with the bundled pip)."""
    pins = _pins(INSTALLER_LOCK)
    assert (list(pins) == ["pip"] and all(h.startswith("sha256:") for h in pins["pip"][2])
            and pins["pip"][2]), pins
    declared = re.search(r"^INSTALLER := pip==(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert declared and declared.group(1) == pins["pip"][0], \
        "run `make lock`: the installer lock is not INSTALLER"
    assert metadata.version("pip") == pins["pip"][0], f"this environment's pip is {metadata.version('pip')}"


def test_ci_builds_every_environment_as_a_new_machine_would_before_the_readmes_test_command() -> None:
    """CI runs .ci/fresh-envs first (a green CI once hid an install that failed on a new machine): it
    ignores this machine's pip configuration, variables and cache, and builds each environment."""
    commands = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert commands.index("bash .ci/fresh-envs") < commands.index("make test"), commands
    assert "make test" in (ROOT / "README.md").read_text()
    fresh = (ROOT / ".ci" / "fresh-envs").read_text()
    assert "PIP_CONFIG_FILE=/dev/null" in fresh and "compgen -e | grep '^PIP_'" in fresh
    assert "PIP_CACHE_DIR=$scratch/pip-cache" in fresh  # empty, removed with the scratch folder
    for step in (".venv/.installed-stamp", "airflow-env", "chromium", "pip==22.3"):
        assert step in fresh, step
