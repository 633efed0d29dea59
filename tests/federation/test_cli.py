"""`feds2r federate certs` and `feds2r federate app`."""

from __future__ import annotations

import tomllib

from feds2r.cli import main


def test_certs_make_a_ca_a_server_certificate_for_the_hosts_and_node_keys(tmp_path, capsys):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ec import ECDSA
    from cryptography.hazmat.primitives.serialization import (
        load_pem_private_key,
        load_ssh_private_key,
        load_ssh_public_key,
    )

    assert main(["federate", "certs", "--out", str(tmp_path), "--node-keys", "2"]) == 0
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    assert cert.issuer == ca.subject
    ca.public_key().verify(  # raises if the CA did not sign it
        cert.signature, cert.tbs_certificate_bytes, ECDSA(cert.signature_hash_algorithm)
    )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    load_pem_private_key((tmp_path / "server.key").read_bytes(), None)
    assert (tmp_path / "server.key").stat().st_mode & 0o077 == 0  # owner only
    for k in range(2):
        key = load_ssh_private_key((tmp_path / f"node-{k}").read_bytes(), None)
        pub = load_ssh_public_key((tmp_path / f"node-{k}.pub").read_bytes())
        assert key.public_key().public_numbers() == pub.public_numbers()
    assert "flwr supernode register" in capsys.readouterr().out


def test_app_writes_a_flower_app_with_the_settings_in_its_run_config(tmp_path):
    app = tmp_path / "fedapp"
    args = ["federate", "app", "--app", str(app), "--num-clients", "3", "--client-steps", "7"]
    args += ["--server-data", "cityscapes:/srv/cs?split=train", "--out", str(tmp_path / "o")]
    # 7 steps cannot hold the default 50 warm-up steps: refused now, not at the run's start
    assert main(args) == 2 and not app.exists()
    args += ["--warmup-steps", "5"]
    assert main(args) == 0
    project = tomllib.loads((app / "pyproject.toml").read_text())
    flwr = project["tool"]["flwr"]["app"]
    assert flwr["components"]["clientapp"] == "feds2r.federation.client_app:app"
    # the run config in its nested form: --client-steps is the clients' recipe's steps
    assert flwr["config"]["clients"]["steps"] == 7 and flwr["config"]["num-clients"] == 3
    assert flwr["config"]["server"]["train"]["steps"] == 300  # the distillation's: the default
    assert flwr["config"]["out"] == str(tmp_path / "o")
    assert main(args) == 2  # refuses to replace it without --force
    assert main([*args, "--force"]) == 0


def test_certs_refuse_an_existing_set_and_force_replaces_all_of_it(tmp_path, capsys):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.ec import ECDSA

    assert main(["federate", "certs", "--out", str(tmp_path), "--node-keys", "2"]) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    capsys.readouterr()
    assert main(["federate", "certs", "--out", str(tmp_path), "--node-keys", "1"]) == 2
    err = capsys.readouterr().err
    assert "already holds certificates or keys" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # nothing touched
    args = ["federate", "certs", "--out", str(tmp_path), "--node-keys", "1", "--force"]
    assert main(args) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ca.crt", "ca.key", "node-0", "node-0.pub", "server.crt", "server.key"]
    assert all((tmp_path / n).read_bytes() != before[n] for n in names)  # a whole new set
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    ca.public_key().verify(
        cert.signature, cert.tbs_certificate_bytes, ECDSA(cert.signature_hash_algorithm)
    )
    assert (tmp_path / "ca.key").stat().st_mode & 0o077 == 0


def test_federate_local_refuses_bad_client_names_and_server_data_before_starting(
    tmp_path, capsys, tiny_world
):
    spec = tiny_world["server"]
    base = ["federate", "local", "--out", str(tmp_path / "o"), "--client", f"a={spec}"]
    for name in ("..", "."):
        assert main([*base, "--client", f"{name}={spec}", "--server-data", spec]) == 2
        assert f"client name '{name}' is not allowed" in capsys.readouterr().err
    bad = ["--client", f"b={spec}", "--server-data", "cityscapes:/nonexistent"]
    assert main([*base, *bad]) == 2
    out, err = capsys.readouterr()
    assert "--server-data cityscapes:/nonexistent" in err and "starting" not in out
    assert list(tmp_path.iterdir()) == []


def test_local_supernodes_share_the_cores():
    import os

    from feds2r.federation.local import client_threads

    cores = len(os.sched_getaffinity(0))
    assert client_threads(3, {}) == {
        "OMP_NUM_THREADS": str(max(1, cores // 3)),
        "MKL_NUM_THREADS": str(max(1, cores // 3)),
    }
    assert client_threads(cores * 4, {})["OMP_NUM_THREADS"] == "1"
    assert client_threads(3, {"OMP_NUM_THREADS": "5"}) == {}  # the user's setting is kept
