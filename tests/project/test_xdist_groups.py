"""pytest-xdist's `--dist loadgroup` (pytest.ini) really keeps each `xdist_group` on one
worker.

The groups exist so that the tests sharing an expensive module fixture (a trained run,
an install, an MLflow server) build it once. xdist marks a grouped test by appending
`@<group>` to its node ID on the worker, and its scheduler reads that suffix. pytest 9.2
changed how node IDs are stored, the suffix no longer lands, and nothing fails: every
group is silently spread over the workers and each worker rebuilds the fixtures
(pytest-dev/pytest-xdist#1386; requirements.txt holds pytest below 9.2 until xdist
follows). This test is where that shows, instead of in CI's time.
"""

import pytest

GROUP = "test_xdist_groups"


@pytest.mark.xdist_group(GROUP)
def test_a_grouped_test_carries_its_group_on_the_worker(request):
  config = request.config
  if not hasattr(config, "workerinput"):
    pytest.skip("not under pytest-xdist: there are no workers to group tests on")
  # On a worker xdist resets --dist to "no" and keeps the controller's choice here.
  if not getattr(config.option, "loadgroup", False):
    pytest.skip("not --dist loadgroup: only loadgroup keeps the groups")
  assert request.node.nodeid.endswith(f"@{GROUP}"), (
      f"{request.node.nodeid}: no @{GROUP} suffix, so --dist loadgroup spreads every "
      "xdist_group over the workers (pytest-xdist#1386: pytest >= 9.2 with this xdist)")
