import os
import sys
from pathlib import Path

# Nothing may reach a model hub from the tests; set before huggingface_hub reads it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# tests import their tiny-model helpers as plain modules
sys.path.insert(0, str(Path(__file__).parent))
