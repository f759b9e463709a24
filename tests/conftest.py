import os
import sys
import tempfile

# Tests import the top-level scripts (train.py, merge.py, analyze.py) and packages by name.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# `datasets` keeps an Arrow copy of every file it reads: keep the tests' copies out of the user's HF cache.
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(tempfile.gettempdir(), "m2rl-tests-hf-datasets"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
