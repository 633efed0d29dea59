"""The built-in procedural driving world (see ``docs/world.md``)."""

from feds2r.data.world.domains import DOMAINS, REAL_DOMAINS, SYNTHETIC_DOMAINS, Domain, get_domain
from feds2r.data.world.render import LAYOUTS, TIMES, WEATHERS, Layout, SceneSpec
from feds2r.data.world.styles import STYLES, Style
from feds2r.data.world.synth import render_scene, synth_all, synth_domain

__all__ = [
    "DOMAINS",
    "LAYOUTS",
    "REAL_DOMAINS",
    "STYLES",
    "SYNTHETIC_DOMAINS",
    "TIMES",
    "WEATHERS",
    "Domain",
    "Layout",
    "SceneSpec",
    "Style",
    "get_domain",
    "render_scene",
    "synth_all",
    "synth_domain",
]
