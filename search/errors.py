"""The exceptions that mean "bad input" to the search's entry point (exit status 2, one-line message)."""

from __future__ import annotations

from bort.architecture import ArchitectureError
from bort.distributed import DistributedError
from bort.modeling import TeacherError
from data.errors import DataError
from search.runner import SearchError
from search.space import SpaceError
from search.storage import StorageError

# DistributedError: an engine that cannot start (no launcher, no Horovod, more processes on a node than GPUs)
INPUT_ERRORS = (ArchitectureError, DistributedError, TeacherError, DataError, SearchError, SpaceError,
                StorageError)
