"""Seal keys: from EVENTBUS_SEAL_KEY (several for rotation) or a key file of the run's own, never from
the Django secret key or anything else in the repository."""

import stat

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from eventbus.sealing import PREFIX, SealBroken, seal, unseal
from tests.harness import python_started


@pytest.fixture
def keys(settings):
    """Set EVENTBUS_SEAL_KEY (a comma-separated string) for what follows; no key file."""
    settings.EVENTBUS_SEAL_KEY_FILE = None

    def use(value: str) -> None:
        settings.EVENTBUS_SEAL_KEY = value

    return use


def test_a_sealed_value_opens_with_its_key_only(keys):
    keys("key-one")
    sealed = seal("tok_visa")
    assert sealed.startswith(PREFIX) and "tok_visa" not in sealed
    assert unseal(sealed) == "tok_visa"
    keys("key-two")
    with pytest.raises(SealBroken):
        unseal(sealed)


def test_rotation_the_first_key_seals_and_every_key_unseals(keys):
    # Given a value sealed before the rotation
    keys("old-key")
    before = seal("tok_before")

    # When a new key is put first
    keys(" new-key , old-key ")
    after = seal("tok_after")

    # Then both open; the new value was sealed with the new key, and dropping the old key drops the old values
    assert (unseal(before), unseal(after)) == ("tok_before", "tok_after")
    keys("new-key")
    assert unseal(after) == "tok_after"
    with pytest.raises(SealBroken):
        unseal(before)


def test_without_a_key_or_a_key_file_nothing_is_sealed_not_even_with_the_secret_key(keys):
    keys("")
    with pytest.raises(ImproperlyConfigured, match="EVENTBUS_SEAL_KEY must be set"):
        seal("tok_visa")


def test_without_a_key_the_run_directory_gets_a_private_fresh_key_made_once(settings, tmp_path):
    # Given no EVENTBUS_SEAL_KEY and a key file that does not exist yet
    settings.EVENTBUS_SEAL_KEY = ""
    settings.EVENTBUS_SEAL_KEY_FILE = tmp_path / "run" / "seal-key"

    # When a value is sealed
    sealed = seal("tok_visa")

    # Then the file holds a fresh Fernet key, readable by its owner only, and that key seals
    path = tmp_path / "run" / "seal-key"
    key = path.read_text().strip()
    Fernet(key)  # a well-formed Fernet key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(path.parent.iterdir()) == [path]  # no draft left behind
    settings.EVENTBUS_SEAL_KEY = key
    assert unseal(sealed) == "tok_visa"

    # And another run directory gets another key: nothing constant or shared (such as the secret key) made it
    settings.EVENTBUS_SEAL_KEY = ""
    settings.EVENTBUS_SEAL_KEY_FILE = tmp_path / "other-run" / "seal-key"
    seal("tok_visa")
    assert (tmp_path / "other-run" / "seal-key").read_text().strip() != key


def test_processes_starting_together_share_one_key_file(settings, tmp_path):
    # Given four processes that find no key file and seal at the same moment
    code = "import django, sys; django.setup(); from eventbus.sealing import seal; sys.stdout.write(seal('tok_visa'))"
    env = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "orderproj.settings.local", "RUN_DIR": str(tmp_path)}
    runs = [python_started(code, env) for _ in range(4)]
    sealed = [run.communicate(timeout=60)[0] for run in runs]

    # Then one key was made, and it opens what every one of them sealed
    assert [run.returncode for run in runs] == [0, 0, 0, 0]
    settings.EVENTBUS_SEAL_KEY = (tmp_path / "seal-key").read_text().strip()
    assert {unseal(value) for value in sealed} == {"tok_visa"}
