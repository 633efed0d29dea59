"""Frozen config dataclasses <-> TOML and Flower's run config, one concern per module.

- :mod:`~feds2r.config.values`: each field checked against its type hint (:func:`check_types`,
  called first in every config's ``__post_init__``) and the ``HxW`` text of a size
  (:func:`parse_size`, :func:`format_size`);
- :mod:`~feds2r.config.dicts`: a config built from a dict, nested sections too
  (:func:`from_dict`), and back (:func:`as_dict`);
- :mod:`~feds2r.config.toml`: config files read with every table and key checked
  (:func:`load_toml`, :func:`load_tables`) and the resolved config of a run written
  (:func:`to_toml`, :func:`write_run_config`);
- :mod:`~feds2r.config.runconfig`: Flower's flat run config (:func:`flatten`,
  :func:`unflatten`, :func:`flat_keys`);
- :mod:`~feds2r.config.docstrings`: each field's docstring (:func:`field_docs`), for the
  command line's help; ``scripts/config_docs.py`` writes the field table of ``docs/config.md``
  from it.

This package sits at the bottom of feds2r: it imports no config class of its own.
"""

from feds2r.config.dicts import as_dict, field_default, from_dict, merged
from feds2r.config.docstrings import field_docs
from feds2r.config.runconfig import Scalar, flat_keys, flatten, unflatten
from feds2r.config.toml import CONFIG_NAME, load_tables, load_toml, to_toml, write_run_config
from feds2r.config.values import check_types, format_size, parse_size

__all__ = [
    "CONFIG_NAME",
    "Scalar",
    "as_dict",
    "check_types",
    "field_default",
    "field_docs",
    "flat_keys",
    "flatten",
    "format_size",
    "from_dict",
    "load_tables",
    "load_toml",
    "merged",
    "parse_size",
    "to_toml",
    "unflatten",
    "write_run_config",
]
