"""The teacher's targets shared through files by the workers of one machine: split, waited for, identical."""

import threading
import time

import pytest
import torch

from bort.distill import DistillationLoss
from bort.training import TeacherOutputs
from search.report import file_lock
from search.teacher_store import SharedTeacherOutputs, targets_digest


@pytest.fixture(scope="module")
def teacher_and_batches(tiny_teacher_and_batches):
    teacher, batches = tiny_teacher_and_batches
    return teacher, [(("train", k), b) for k, b in enumerate(batches[:3])] + [(("heldout", 0), batches[3])]


def _loss():
    return DistillationLoss({"attention_relations": 1.0, "hidden_states": 1.0}, student_hidden_size=16,
                            teacher_hidden_size=32, relation_heads=4)


def _same(a, b) -> bool:
    pairs = [(a.hidden, b.hidden)] + [(x, y) for pa, pb in zip(a.relations, b.relations) for x, y in zip(pa, pb)]
    return len(a.relations) == len(b.relations) == 3 and all(torch.equal(x, y) for x, y in pairs)


def test_stored_targets_equal_the_in_memory_ones_and_are_read_not_recomputed(teacher_and_batches, tmp_path):
    teacher, keyed = teacher_and_batches
    first = SharedTeacherOutputs(teacher, _loss(), tmp_path / "t")
    first.fill(keyed)
    assert first.computed == len(keyed) and len(list((tmp_path / "t").glob("*.pt"))) == len(keyed)
    second = SharedTeacherOutputs(teacher, _loss(), tmp_path / "t")  # another worker, later
    second.fill(keyed)
    assert second.computed == 0
    reference = TeacherOutputs(teacher, _loss())
    for key, batch in keyed:
        assert _same(second(key, batch), reference(key, batch))
    assert second.computed == 0


def test_a_worker_takes_the_batches_nobody_computes_and_waits_for_the_others(teacher_and_batches, tmp_path):
    teacher, keyed = teacher_and_batches
    other = SharedTeacherOutputs(teacher, _loss(), tmp_path / "t")  # a worker busy with the first batch
    worker = SharedTeacherOutputs(teacher, _loss(), tmp_path / "t")
    key0, batch0 = keyed[0]
    with file_lock(other._lock_path(key0)):
        thread = threading.Thread(target=worker.fill, args=(keyed,))
        thread.start()
        deadline = time.monotonic() + 60
        while worker.computed < len(keyed) - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        assert thread.is_alive(), "fill() returned while another worker was still computing a batch"
        other._compute_and_store(key0, batch0)
    thread.join(timeout=60)
    assert not thread.is_alive() and worker.computed == len(keyed) - 1 and other.computed == 1
    assert _same(worker(key0, batch0), TeacherOutputs(teacher, _loss())(key0, batch0))


def test_a_batch_whose_worker_died_is_computed_by_another(teacher_and_batches, tmp_path):
    teacher, keyed = teacher_and_batches
    worker = SharedTeacherOutputs(teacher, _loss(), tmp_path / "t")
    dead = SharedTeacherOutputs(teacher, _loss(), tmp_path / "t")
    with file_lock(dead._lock_path(keyed[0][0])):
        thread = threading.Thread(target=worker.fill, args=(keyed,))
        thread.start()
        deadline = time.monotonic() + 60
        while worker.computed < len(keyed) - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert thread.is_alive()
    # released without a file, as the operating system does when the holder dies
    thread.join(timeout=60)
    assert worker.computed == len(keyed) and all(worker._path(k).is_file() for k, _ in keyed)


def test_after_remove_nothing_is_written_and_targets_are_computed(teacher_and_batches, tmp_path):
    teacher, keyed = teacher_and_batches
    store = SharedTeacherOutputs(teacher, _loss(), tmp_path / "teacher_targets" / "abc")
    store.fill(keyed[:1])
    store.remove()
    assert not (tmp_path / "teacher_targets").exists()
    key, batch = keyed[1]
    assert _same(store(key, batch), TeacherOutputs(teacher, _loss())(key, batch))
    assert not (tmp_path / "teacher_targets").exists()


def test_digest_follows_the_batches_teacher_and_settings(teacher_and_batches):
    _, keyed = teacher_and_batches
    batches = [b for _, b in keyed]
    base = targets_digest("t", {"a": 1}, {"relation_heads": 4}, batches)
    assert base == targets_digest("t", {"a": 1}, {"relation_heads": 4}, [dict(b) for b in batches])
    changed = [dict(b) for b in batches]
    changed[2] = {**changed[2], "input_ids": changed[2]["input_ids"].clone()}
    changed[2]["input_ids"][0, 0] += 1
    assert len({base, targets_digest("t", {"a": 1}, {"relation_heads": 4}, changed),
                targets_digest("u", {"a": 1}, {"relation_heads": 4}, batches),
                targets_digest("t", {"a": 2}, {"relation_heads": 4}, batches),
                targets_digest("t", {"a": 1}, {"relation_heads": 6}, batches)}) == 5
