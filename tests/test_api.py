"""The curated front door, ``feds2r/__init__.py``."""

import pytest

import feds2r


def test_the_front_door_exports_the_public_api():
    for name in feds2r.__all__:  # every advertised name resolves
        assert getattr(feds2r, name) is not None, name
    for name in ("create_model", "train_client", "evaluate", "run_server_pipeline",
                 "TeacherEnsemble", "ServerConfig", "find_unstable", "run_distill"):  # fmt: skip
        assert name in feds2r.__all__
    with pytest.raises(AttributeError, match="no attribute"):
        feds2r.not_a_name  # noqa: B018


@pytest.mark.slow
def test_the_python_example_in_docs_api_runs(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), scope)  # noqa: S102 - our own docs
    assert (tmp_path / "runs/api/server/global/model.safetensors").is_file()
    assert set(scope["summary"]["miou"]) == {"cityscapes-like"}
    assert (tmp_path / "runs/api/server/global/config.toml").is_file()


def test_every_lazy_name_is_exported():
    assert set(feds2r._LAZY) <= set(feds2r.__all__)
