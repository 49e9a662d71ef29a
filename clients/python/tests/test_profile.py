"""Profiles on disk, without a mesh: one the sesphr CLI sealed under a passphrase is refused
with one clear message, not a crash."""

from __future__ import annotations

import pytest

from sesphr_client.client import ClientError, Profile

SEALED = (b"sesphr-sealed-v1\nrole: master.key\nkdf: argon2id v=19 m=65536 t=3 p=1\n"
          b"salt: AAAAAAAAAAAAAAAAAAAAAA==\nnonce: AAAAAAAAAAAAAAAA\ndata: AA==\nsum: 00\n")


def _profile(tmp_path, master: bytes, tls: bytes = b"-----BEGIN PRIVATE KEY-----\n"):
    (tmp_path / "profile.toml").write_text(
        'user_id = "alice"\nrole = "patient"\ntrust_domain = "sesphr.local"\n')
    (tmp_path / "master.key").write_bytes(master)
    (tmp_path / "tls.key").write_bytes(tls)
    return tmp_path


def test_a_plain_profile_loads(tmp_path):
    home = _profile(tmp_path, b"11" * 32 + b"\n")
    assert Profile(home).master_secret().raw == bytes([0x11]) * 32


@pytest.mark.parametrize("sealed", ["master.key", "tls.key"])
def test_a_sealed_profile_is_refused_clearly(tmp_path, sealed):
    home = _profile(tmp_path, b"11" * 32)
    (home / sealed).write_bytes(SEALED.replace(b"master.key", sealed.encode()))
    with pytest.raises(ClientError) as e:
        Profile(home)
    message = str(e.value)
    assert f"{home / sealed} is protected by a passphrase" in message
    assert "sesphr passphrase remove" in message
