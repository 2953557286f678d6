"""A throw-away PostgreSQL server for the multi-worker tests: Debian's packages, 127.0.0.1, a temporary data folder.

`scripts/setup_postgres.sh` installs the server where it is missing (as root with apt-get). Where it cannot be
installed, the tests that need it skip with a warning that says so.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


class PostgresUnavailable(UserWarning):
    """PostgreSQL could not be installed or started: its tests are skipped."""


def _skip(reason: str):
    warnings.warn(PostgresUnavailable(f"PostgreSQL tests SKIPPED: {reason}"))
    pytest.skip(f"PostgreSQL unavailable: {reason}")


@pytest.fixture(scope="session")
def postgres_server(free_port):
    """Yields a function name -> URL that creates a fresh database on a private server; stops the server at the end.

    The server refuses to run as root, so under root it runs as the system user ``postgres``.
    """
    found = subprocess.run([str(ROOT / "scripts" / "setup_postgres.sh")], capture_output=True, text=True)
    if found.returncode != 0:
        _skip(found.stderr.strip().splitlines()[-1] if found.stderr.strip() else "setup_postgres.sh failed")
    bindir = Path(found.stdout.strip().splitlines()[-1])
    prefix: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="bort-pg-"))
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            _skip("running as root and there is no 'postgres' user to run the server")
        os.chown(folder, account.pw_uid, account.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data, log = folder / "data", folder / "server.log"
    try:
        subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(data), "-U", "bort", "--auth=trust", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, text=True)
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start",
                        "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                              f"-c max_connections=100"], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        _skip(f"the server did not start: {(exc.stderr or '').strip()[-300:]}")

    import psycopg2

    def create_database(name: str) -> str:
        connection = psycopg2.connect(host="127.0.0.1", port=port, user="bort", dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        connection.close()
        return f"postgresql://bort@127.0.0.1:{port}/{name}"

    yield create_database
    subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                   capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)


# --- a tiny search shared by the worker, strategy and report tests ---------------------------------------------

@pytest.fixture(scope="session")
def search_inputs(tmp_path_factory, teacher_path, wikitext_files):
    folder = tmp_path_factory.mktemp("inputs")
    lines = wikitext_files[0].read_text(encoding="utf-8").splitlines(keepends=True)
    text, size = [], 0
    for line in lines:  # about 150 kB of whole lines: 11 documents, so that a fifth can be held out
        text.append(line)
        size += len(line)
        if size > 150_000:
            break
    (folder / "text.txt").write_text("".join(text), encoding="utf-8")
    (folder / "space.yaml").write_text("num_hidden_layers: [1, 2]\nnum_attention_heads: [3]\nhidden_size: [96]\n"
                                       "intermediate_size: [32, 64, 128]\n")
    return {"text": folder / "text.txt", "space": folder / "space.yaml", "cache": folder / "cache",
            "teacher": teacher_path}


@pytest.fixture(scope="session")
def search_cli(search_inputs):
    """A function (output folder, *extra options) -> the command-line options of the tiny search: 6 architectures,
    ε = 1 (each is a candidate), 20 steps of 4 × 32 tokens, 1 held-out batch, fast heartbeats (1 s, grace 3 s)."""
    return lambda out, *extra: _search_args(search_inputs, out, *extra)


def _search_args(inputs: dict, out: Path, *extra: str) -> list[str]:
    return ["--teacher", str(inputs["teacher"]), "--corpus", str(inputs["text"]), "--space", str(inputs["space"]),
            "--epsilon", "1", "--steps", "20", "--batch-size", "4", "--eval-batches", "1", "--max-seq-length", "32",
            "--heldout-fraction", "0.2", "--latency", "candidates", "--latency-repeats", "1", "--latency-warmup",
            "0", "--threads", "1", "--no_progress", "--cache-dir", str(inputs["cache"]), "--heartbeat-interval", "1",
            "--grace-period", "3", "--poll-interval", "0.2", "--output-dir", str(out), *extra]
