"""Prints the README's "Two commands", one per line, exactly as a reader copies them.

.ci/run runs what this prints, so CI runs the commands the README shows and cannot
drift from them. They are the ```bash blocks under the heading "## Two commands".
"""

import sys

HEADING = "## Two commands"


def two_commands(readme_text):
  """The one-line ```bash blocks of the "Two commands" section, in order."""
  commands, section, block = [], False, None
  for line in readme_text.splitlines():
    if line.startswith("## "):
      section = line.strip() == HEADING
    elif section and block is None and line.strip() == "```bash":
      block = []
    elif block is not None and line.strip() == "```":
      commands.append(" ".join(block))
      block = None
    elif block is not None and line.strip():
      block.append(line.strip())
  return commands


def main(path):
  with open(path, encoding="utf-8") as f:
    commands = two_commands(f.read())
  if len(commands) != 2:
    sys.exit(f"{path}: expected 2 commands under {HEADING!r}, found {len(commands)}")
  print("\n".join(commands))


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "README.md")
