import sys
from pathlib import Path

# the report and render tests share their sample report (tests/eval/eval_helpers.py)
sys.path.insert(0, str(Path(__file__).parent))
