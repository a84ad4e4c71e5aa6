"""The run-directory layout: every path of a run's outputs, by name.

The one place that knows how a run directory (`--output_dir`) is organised:

  flags.txt                   resolved flags (flagfile format; --flagfile=... reruns it)
  run_config.json             the result-determining settings (restart check)
  summary.json                the summary of the teacher and every student
  teacher/                    the teacher's stage directory
  students/<mode>/            one stage directory per distillation mode
  mlflow_pending/             what MLflow could not take mid-run (tf_srkd.tracking.mlflow_pending)

and inside a stage directory:

  model.keras                 the trained network (logits)
  participation.npy           int32 [N] participation counts (self-regulating stages)
  significance.npy            float32 [N] significance (teacher)
  history.json                per-epoch logs so far (survives resumes)
  metrics.json                written last: its presence marks the stage finished
  backup/                     the checkpoint of an unfinished stage
  tflite/                     exported `.tflite` files (students)

Plain paths only: no TensorFlow, nothing read or written here.
"""

import dataclasses
import os
from typing import List, Optional, Tuple

TEACHER_DIR = "teacher"
STUDENTS_DIR = "students"


def _entry(name):
  """A read-only property: the path of `name` inside the object's `path`."""
  return property(lambda self: os.path.join(self.path, name), doc=f"`<path>/{name}`.")


@dataclasses.dataclass(frozen=True)
class StageDir:
  """The directory of one trained model (the teacher or one student)."""

  path: str
  model = _entry("model.keras")
  participation = _entry("participation.npy")
  significance = _entry("significance.npy")
  history = _entry("history.json")
  metrics = _entry("metrics.json")
  backup = _entry("backup")
  tflite = _entry("tflite")

  @property
  def finished(self) -> bool:
    """True once the stage wrote its metrics.json (its last file)."""
    return os.path.exists(self.metrics)


@dataclasses.dataclass(frozen=True)
class RunDir:
  """A run's output directory."""

  path: str
  flags = _entry("flags.txt")
  run_config = _entry("run_config.json")
  summary = _entry("summary.json")
  students = _entry(STUDENTS_DIR)
  mlflow_pending = _entry("mlflow_pending")

  @property
  def teacher(self) -> StageDir:
    """The run's own teacher stage (`teacher/`)."""
    return StageDir(os.path.join(self.path, TEACHER_DIR))

  def student(self, mode: str) -> StageDir:
    """The stage of the student distilled in `mode` (`students/<mode>/`)."""
    return StageDir(os.path.join(self.students, mode))

  def trained_students(self) -> List[str]:
    """The modes that have a `students/<mode>/model.keras`, sorted."""
    if not os.path.isdir(self.students):
      return []
    return sorted(m for m in os.listdir(self.students) if os.path.isfile(self.student(m).model))


def teacher_stage(teacher_dir: str) -> StageDir:
  """The teacher named by `--teacher_dir`: a run's directory (holding `teacher/`) or the
  `teacher/` directory itself."""
  run_teacher = RunDir(teacher_dir).teacher
  return run_teacher if os.path.isdir(run_teacher.path) else StageDir(teacher_dir)


def teacher_of(run: RunDir, configured_teacher_dir: Optional[str] = None) -> StageDir:
  """The teacher a run distilled from: its own, else the `--teacher_dir` it was run with."""
  if os.path.exists(run.teacher.model) or not configured_teacher_dir:
    return run.teacher
  return teacher_stage(configured_teacher_dir)


def locate(model_path: str) -> Tuple[Optional[RunDir], str, Optional[str]]:
  """Where a model file sits: (run, role, mode).

  role is "student" (mode = the directory name), "teacher", or "model" for a
  file outside a run directory (run and mode None).
  """
  stage = os.path.dirname(os.path.abspath(model_path))
  parent = os.path.dirname(stage)
  if os.path.basename(parent) == STUDENTS_DIR:
    return RunDir(os.path.dirname(parent)), "student", os.path.basename(stage)
  if os.path.basename(stage) == TEACHER_DIR:
    return RunDir(parent), "teacher", None
  return None, "model", None
