"""`pip install` the repository into a fresh venv and run `tf-srkd --flagfile=smoke` from an
empty directory; its console says what it does and has none of the warnings that
our own calls could cause.

Offline: the venv sees the packages of the environment that runs the tests (a `.pth`
file adds its site directories behind the venv's own) and the install neither resolves
dependencies nor builds in isolation, so the build backend is that environment's
setuptools (requirements.txt pins one that builds wheels by itself). This works alike
from the system Python, a venv, a virtualenv or conda: `--system-site-packages` would
expose the *base* interpreter's packages instead, not the environment the user installed
the requirements into. The repository's tracked and new files are copied first, so
build/ and *.egg-info stay out of the tree.
"""

import os
import shutil
import site
import subprocess
import sys
import venv

import pytest

# Under pytest-xdist (`-n`) this file's tests stay on one worker: they share one venv with the
# package installed that each worker would otherwise build again.
pytestmark = pytest.mark.xdist_group("test_install")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: Console lines our own calls must not cause; none may appear.
KNOWN_WARNINGS = ("shuffle=True", "retracing", "Sharding callback duration")
STAGES = ("teacher", "student-conventional", "student-significance", "student-regulated",
          "student-hybrid")


def _copy_sources(dest):
  """The files git would commit (tracked, or new and not ignored), symlinks kept."""
  listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                          cwd=ROOT, check=True, capture_output=True).stdout.decode()
  for rel in filter(None, listed.split("\0")):
    src = os.path.join(ROOT, rel)
    if not os.path.lexists(src):
      continue  # Deleted in the work tree.
    os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
    shutil.copy2(src, os.path.join(dest, rel), follow_symlinks=False)


def current_site_dirs():
  """This interpreter's site directories (site-packages and the user's), in path order."""
  dirs = [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]
  if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
    dirs.append(site.getusersitepackages())
  return list(dict.fromkeys(os.path.abspath(d) for d in dirs))


def make_venv_seeing_this_environment(env_dir):
  """A venv whose Python sees its own site-packages first, then this environment's.

  No pip or setuptools of its own (they would shadow this environment's): `python -m pip`
  there is this environment's pip, installing into the venv. `site.addsitedir` also runs
  the `.pth` files of those directories (editable installs, namespace packages).

  Returns:
    The venv's bin directory.
  """
  venv.create(str(env_dir), with_pip=False)
  bin_dir = env_dir / "bin"
  purelib = subprocess.run(
      [str(bin_dir / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
      check=True, capture_output=True, text=True).stdout.strip()
  lines = [f"import site; site.addsitedir({d!r})" for d in current_site_dirs()]
  with open(os.path.join(purelib, "zz_outer_environment.pth"), "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return bin_dir


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """{"bin": the venv's bin directory} with the repository installed into it."""
  tmp = tmp_path_factory.mktemp("install")
  source, env_dir = tmp / "source", tmp / "venv"
  _copy_sources(str(source))
  bin_dir = make_venv_seeing_this_environment(env_dir)
  subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
                  "--no-build-isolation", "--disable-pip-version-check", str(source)],
                 check=True, cwd=str(tmp), timeout=600)
  return {"bin": bin_dir}


def test_the_test_venv_sees_this_environment_and_installs_into_itself(tmp_path):
  bin_dir = make_venv_seeing_this_environment(tmp_path / "venv")
  probe = subprocess.run(
      [str(bin_dir / "python"), "-c",
       "import sys, setuptools, absl; print(sys.prefix); print(absl.__file__)"],
      check=True, capture_output=True, text=True).stdout.splitlines()
  assert probe[0] == str(tmp_path / "venv")
  import absl  # pylint: disable=import-outside-toplevel
  assert probe[1] == absl.__file__  # This environment's package, not the base Python's.


@pytest.fixture(scope="module")
def smoke_run(installed, tmp_path_factory):
  """(result, output dir) of `tf-srkd --flagfile=smoke` run from an empty directory,
  tracked in MLflow (a SQLite store there): five stages logging their models."""
  workdir = tmp_path_factory.mktemp("empty")
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL")}
  # As a user would type it: relative to the directory the command runs in.
  if env.get("TFDS_DATA_DIR") and os.path.isabs(env["TFDS_DATA_DIR"]):
    env["TFDS_DATA_DIR"] = os.path.relpath(env["TFDS_DATA_DIR"], str(workdir))
  result = subprocess.run(
      [str(installed["bin"] / "tf-srkd"), "--flagfile=smoke", "--mlflow",
       "--mlflow_tracking_uri=sqlite:///mlflow.db", "--output_dir=out"],
      cwd=str(workdir), env=env, capture_output=True, text=True, timeout=900)
  return result, workdir / "out"


@pytest.mark.slow
def test_installed_command_runs_the_shipped_smoke_experiment_from_anywhere(smoke_run):
  result, out = smoke_run
  assert result.returncode == 0, result.stderr[-3000:]
  assert (out / "summary.json").is_file() and (out / "flags.txt").is_file()
  for stage in ("teacher", "students/hybrid"):
    assert (out / stage / "metrics.json").is_file()
  assert "outputs in out" in result.stdout
  assert (out.parent / "mlflow.db").is_file()


@pytest.mark.slow
def test_console_has_a_line_per_stage_and_no_warnings_from_our_own_calls(smoke_run):
  result, _ = smoke_run
  console = result.stdout + result.stderr
  found = [line for line in console.splitlines() if any(w in line for w in KNOWN_WARNINGS)]
  assert not found, "\n".join(found)
  for stage in STAGES:
    assert any(line.startswith(f"== {stage} ") and "256 samples, 2 epochs" in line
               for line in result.stdout.splitlines()), stage
    assert f"== {stage} done: test accuracy " in result.stdout


@pytest.mark.slow
def test_other_console_scripts_are_installed(installed):
  for script in ("tf-srkd-export", "tf-srkd-report", "tf-srkd-subset"):
    result = subprocess.run([str(installed["bin"] / script), "--helpshort"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: {script} "), (result.stdout, result.stderr[-2000:])
    assert "(default:" in result.stdout

