"""`manage.py dlq replay` refuses what it cannot use with a one-line error, never a traceback."""

import subprocess
import sys

import pytest
from django.core.management import CommandError, call_command

from tests.harness import ROOT

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["1", "--body-file", "/nonexistent.json"], "cannot read /nonexistent.json: No such file or directory"),
        (["1", "--body-file", "{directory}"], "cannot read {directory}: Is a directory"),
        (["1", "--body-file", "{not_json}"], "is not valid JSON"),
        (["1", "--body-file", "{not_text}"], "is not valid JSON"),
        (["1", "--body-file", "{fixed}"], "no dead letter #1"),
        (["424242"], "no dead letter #424242"),
    ],
    ids=["missing-file", "directory", "invalid-json", "not-utf8", "unknown-id-with-body", "unknown-id"],
)
def test_replay_refuses_a_bad_body_file_or_an_unknown_id_with_a_command_error(tmp_path, args, message):
    files = {"directory": tmp_path, "not_json": tmp_path / "not.json", "not_text": tmp_path / "latin1.json",
             "fixed": tmp_path / "fixed.json"}  # fmt: skip
    files["not_json"].write_text('{"specversion": "1.0",')
    files["not_text"].write_bytes(b'{"name": "\xe9"}')
    files["fixed"].write_text('{"specversion": "1.0"}')
    args = [arg.format(**files) for arg in args]

    with pytest.raises(CommandError) as error:
        call_command("dlq", "replay", *args)
    assert message.format(**files) in str(error.value)


def test_manage_py_prints_the_error_not_a_traceback():
    result = subprocess.run(
        [sys.executable, "manage.py", "dlq", "replay", "1", "--body-file", "/nonexistent.json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == "CommandError: cannot read /nonexistent.json: No such file or directory"
