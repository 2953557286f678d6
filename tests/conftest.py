"""Shared fixtures: the real data in ../shared/data (or BORT_DATA_ROOT), and per-process thread limits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The suite runs on the CPU, as CI does, also on a machine with GPUs: its tests compare one process with runs under
# launchers, which must use one device type, and a one-GPU machine cannot hold two NCCL ranks (checked on an H100).
# BORT_TEST_GPU=1 keeps the GPUs visible: the GPU-aware tests then take their GPU branch (fp16); the two-process tests
# then need two GPUs. Set before anything asks CUDA for its devices.
if os.environ.get("BORT_TEST_GPU") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import torch  # noqa: E402

from data.resources import data_root  # noqa: E402

# Two cores are shared by everything in CI: one intra-op thread per test process keeps runs predictable.
THREADS = int(os.environ.get("OMP_NUM_THREADS", "1"))
torch.set_num_threads(THREADS)


@pytest.fixture(autouse=True)
def _torch_threads():
    """Every test starts and ends at the suite's thread count. Entry points run in-process set torch's count for the
    whole process (``--threads``), in a test or in a module fixture set up just before one: without this, a test would
    run under the count another left behind (a latency profile, for one, is named by it)."""
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(THREADS)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if root is None or not root.is_dir():
        pytest.fail("the real data folder is missing: set BORT_DATA_ROOT or place it at ../shared/data")
    return root


@pytest.fixture(scope="session")
def teacher_path(shared_data: Path) -> Path:
    return shared_data / "teacher" / "all-MiniLM-L6-v2"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, teacher_path: Path) -> Path:
    """A 2-layer, width-32 ``BertModel`` folder (no heads, like the search's output) with the teacher's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)  # the same tiny model in every test session
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def wikitext_files(shared_data: Path) -> list[Path]:
    folder = shared_data / "corpus" / "wikitext-2"
    return [folder / "valid.txt", folder / "test.txt"]


@pytest.fixture(scope="session")
def bert_sample_text(shared_data: Path) -> Path:
    return shared_data / "corpus" / "bert_sample" / "sample_text.txt"


@pytest.fixture(scope="session")
def tiny_teacher_and_batches():
    """A 2-layer, width-32 BERT encoder built from a config (eager attention, eval mode) and four seeded batches of
    (4, 12) token ids, the second one padded after 9 tokens."""
    from transformers import AutoModel, BertConfig

    torch.manual_seed(0)
    teacher = AutoModel.from_config(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=4, intermediate_size=48,
                                               attn_implementation="eager")).eval()
    gen = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 100, (4, 12), generator=gen),
                "attention_mask": torch.ones(4, 12, dtype=torch.long)} for _ in range(4)]
    batches[1]["attention_mask"][:, 9:] = 0
    return teacher, batches


@pytest.fixture(scope="session")
def free_port():
    """A function returning a TCP port free on 127.0.0.1 (for a launcher's rendezvous)."""
    import socket

    def pick() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]

    return pick


@pytest.fixture(scope="session")
def at_once():
    """A function ``(fn, n) -> (results, errors)``: calls ``fn()`` in ``n`` threads released together by a barrier
    (each with its own connections, as separate processes would have); ``errors`` holds the repr of each exception."""
    import threading

    def run(fn, n: int) -> tuple[list, list[str]]:
        barrier, results, errors = threading.Barrier(n), [], []

        def call():
            barrier.wait()
            try:
                results.append(fn())
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                errors.append(repr(exc))

        threads = [threading.Thread(target=call) for _ in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        return results, errors

    return run


@pytest.fixture(scope="session")
def trials_so_far():
    """A function ``(url, study_name, states=None) -> list[FrozenTrial]`` for watching a study that processes under
    test are creating: [] until its tables and the study exist. It opens the storage as the workers do, so the watcher
    racing them to create Optuna's tables neither fails nor makes a worker fail."""
    import optuna

    from search.storage import StorageError, open_storage

    def read(url: str, study_name: str, states=None) -> list:
        try:
            study = optuna.load_study(study_name=study_name, storage=open_storage(url))
            return study.get_trials(deepcopy=False, states=states)
        except (KeyError, StorageError):  # no such study yet; tables still being created
            return []

    return read


@pytest.fixture(scope="session")
def horovodrun() -> str:
    """The ``horovodrun`` launcher beside this Python (or on PATH); skips, saying so loudly, without Horovod."""
    import shutil
    import sys

    try:
        import horovod.torch  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"HOROVOD NOT INSTALLED ({exc}): run scripts/build_horovod.sh to test the Horovod path")
    beside_python = Path(sys.executable).with_name("horovodrun")
    found = str(beside_python) if beside_python.exists() else shutil.which("horovodrun")
    if found is None:
        pytest.fail("horovod.torch imports but the horovodrun launcher is not on PATH")
    return found
