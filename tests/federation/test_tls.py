"""The private-key writer of `feds2r.federation.tls`."""

from __future__ import annotations

import os

from feds2r.federation.tls import _write_private


def test_private_keys_are_owner_only_and_never_follow_a_planted_temp_file(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("untouched")
    keys = tmp_path / "keys"
    keys.mkdir()
    # the name the old writer used for its temporary file, planted as a symlink
    (keys / f".node-0.tmp{os.getpid()}").symlink_to(outside)
    old_umask = os.umask(0)  # a permissive umask must not loosen the key's mode
    try:
        _write_private(keys / "node-0", b"SECRET KEY")
    finally:
        os.umask(old_umask)
    assert outside.read_text() == "untouched"
    assert (keys / "node-0").read_bytes() == b"SECRET KEY"
    assert (keys / "node-0").stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in keys.iterdir()) == [f".node-0.tmp{os.getpid()}", "node-0"]
