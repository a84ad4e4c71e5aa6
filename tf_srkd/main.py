"""`python -m tf_srkd.main`: the `tf-srkd` command (see `tf_srkd.cli.main`)."""

from tf_srkd.cli.main import run_main

if __name__ == "__main__":
  run_main()
