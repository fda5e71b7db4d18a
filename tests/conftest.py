"""Shared pytest set-up: tests/ on sys.path, so that a test in any sub-folder can `import helpers`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
