from pathlib import Path

from data import resources
from data.sources import is_hub_name


def test_defaults_resolve_to_the_local_data_folder(shared_data):
    assert Path(resources.default_teacher()) == shared_data / "teacher" / "all-MiniLM-L6-v2"
    assert [Path(p).name for p in resources.default_corpus()] == ["valid.txt", "test.txt"]


def test_defaults_fall_back_to_hub_names_without_local_data(monkeypatch, tmp_path):
    monkeypatch.setenv("BORT_DATA_ROOT", str(tmp_path))  # an empty data folder
    assert resources.default_teacher() == resources.HUB_TEACHER
    corpus = resources.default_corpus()
    assert corpus == list(resources.HUB_CORPUS) and all(is_hub_name(name) for name in corpus)
    assert resources.default_glue_dir() is None
