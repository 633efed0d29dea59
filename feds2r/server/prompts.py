"""Text prompts about the unstable classes, for the image generator.

FedS2R asks a large language model for descriptive prompts about each unstable class. Two
backends: ``builtin`` composes varied prompts offline from a class, a place, the weather and the
time of day ("A photo of a motorcycle on a rainy city street at dusk"); ``llm`` asks any
OpenAI-compatible chat endpoint. The number of prompts per unstable class grows with its
inconsistency: ``n_c = round(N * s_c / sum_u s_u)``, at least one each.
"""

from __future__ import annotations

import ipaddress
import json
import re
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from feds2r.data.world.render import LAYOUTS, TIMES, WEATHERS
from feds2r.errors import Feds2rError


@dataclass(frozen=True)
class Prompt:
    """One image request: its text and the scene it describes (class, weather, time, place)."""

    text: str
    classes: tuple[str, ...]
    weather: str = "clear"
    time: str = "day"
    layout: str = "urban"

    def to_dict(self) -> dict:
        return asdict(self)


def prompt_counts(scores: dict[str, float], unstable: list[str], total: int) -> dict[str, int]:
    """Prompts per unstable class, proportional to its inconsistency; they sum to ``total``.

    Every class gets at least one while ``total`` allows; with fewer prompts than unstable
    classes, the ``total`` most inconsistent classes get one each (the others none).
    """
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    if not unstable or total == 0:
        return {}
    weights = np.array([max(scores[c] or 0.0, 1e-6) for c in unstable])
    if total < len(unstable):
        top = set(np.argsort(-weights, kind="stable")[:total].tolist())
        return {c: 1 for k, c in enumerate(unstable) if k in top}
    raw = total * weights / weights.sum()
    counts = np.maximum(np.floor(raw).astype(int), 1)
    remainder = raw - np.floor(raw)
    # hand out what rounding down left, largest remainders first
    for k in np.argsort(-remainder)[: max(total - counts.sum(), 0)]:
        counts[k] += 1
    # "at least one each" may have handed out too many: take them back from the classes with
    # more than one, smallest remainders first
    while counts.sum() > total:
        k = min((k for k in range(len(counts)) if counts[k] > 1), key=lambda k: remainder[k])
        counts[k] -= 1
    return dict(zip(unstable, counts.tolist(), strict=True))


_PLACE = {
    "urban": ("city street", "busy intersection", "downtown avenue", "narrow old-town street"),
    "suburban": ("suburban road", "quiet residential street", "tree-lined road"),
    "highway": ("highway", "motorway on-ramp", "multi-lane expressway"),
    "unstructured": ("unpaved road in a crowded town", "rural road", "market street"),
}
_WEATHER = {
    "clear": ("sunny", "clear"),
    "overcast": ("overcast", "cloudy"),
    "fog": ("foggy",),
    "rain": ("rainy", "wet"),
    "snow": ("snowy", "snow-covered"),
}
_TIME = {
    "day": ("during the day", "at noon", "in the afternoon"),
    "dusk": ("at dusk", "at sunset"),
    "night": ("at night", "late at night"),
}
_VIEW = ("A photo of", "A dashcam photo of", "A street-level photo of", "A realistic photo of")
_WHERE = ("on", "driving along", "crossing", "parked by", "next to")


def builtin_prompts(counts: dict[str, int], seed: int = 0) -> list[Prompt]:
    """Varied template prompts, ``counts[c]`` for each class; deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    out = []
    for cls, n in counts.items():
        for _ in range(n):
            weather, time, layout = pick(WEATHERS), pick(TIMES), pick(LAYOUTS)
            article = "an" if cls[0] in "aeiou" else "a"
            text = (
                f"{pick(_VIEW)} {article} {cls} {pick(_WHERE)} a {pick(_WEATHER[weather])} "
                f"{pick(_PLACE[layout])} {pick(_TIME[time])}"
            )
            out.append(Prompt(text, (cls,), weather, time, layout))
    return out


def _scene_from_text(text: str) -> tuple[str, str, str]:
    """Weather, time and layout that a free-text prompt mentions (defaults otherwise)."""
    t = text.lower()
    weather = next(
        (
            w
            for w, words in (
                ("fog", ("fog", "mist", "haz")),
                ("rain", ("rain", "wet")),
                ("snow", ("snow",)),
                ("overcast", ("overcast", "cloud")),
            )
            if any(x in t for x in words)
        ),
        "clear",
    )
    time = "night" if "night" in t else "dusk" if any(x in t for x in ("dusk", "sunset")) else "day"
    layout = (
        "highway"
        if any(x in t for x in ("highway", "motorway", "expressway"))
        else "unstructured"
        if any(x in t for x in ("unpaved", "rural", "dirt"))
        else "suburban"
        if "suburb" in t or "residential" in t
        else "urban"
    )
    return weather, time, layout


class _RefuseRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are refused: following one would send the ``Authorization`` header elsewhere."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201
        fp.close()
        raise Feds2rError(
            f"the LLM endpoint {req.full_url} answered with a redirect ({code}) to {newurl}; "
            "feds2r does not follow redirects, so that the API key is never sent to another "
            "address. Give the final address as --llm-url if you trust it"
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_endpoint(url: str, api_key: str | None) -> None:
    """Refuse a non-HTTP(S) URL; warn when a key would travel unencrypted to another machine."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Feds2rError(
            f"--llm-url {url!r} is not an http:// or https:// address; give the base URL of an "
            "OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1"
        )
    if api_key and parts.scheme == "http" and not _is_loopback(parts.hostname):
        warnings.warn(
            f"the API key goes over plain http to {parts.hostname}, where anyone on the network "
            "path can read it; use https:// for a server on another machine",
            stacklevel=3,
        )


def llm_prompts(
    counts: dict[str, int],
    *,
    url: str,
    model: str,
    api_key: str | None = None,
    timeout: float = 60.0,
) -> list[Prompt]:
    """Ask an OpenAI-compatible chat endpoint (``URL/chat/completions``) for the prompts.

    The API key (``Authorization: Bearer``) goes only to ``url``'s host: redirects are refused,
    and a warning is given when it would travel over plain http to a non-loopback host.
    """
    _check_endpoint(url, api_key)
    opener = urllib.request.build_opener(_RefuseRedirect)
    out = []
    endpoint = url.rstrip("/") + "/chat/completions"
    for cls, n in counts.items():
        request = {
            "model": model,
            "messages": [
                {
                    "role": "system",
                    "content": "You write prompts for a text-to-image model. "
                    "Answer with one prompt per line, nothing else.",
                },
                {
                    "role": "user",
                    "content": f"Write {n} varied prompts for photorealistic "
                    f"street-level driving photos that clearly show a {cls}. Vary the place, the "
                    "weather and the time of day. One prompt per line.",
                },
            ],
            "temperature": 0.9,
        }
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        req = urllib.request.Request(endpoint, json.dumps(request).encode(), headers)
        try:
            with opener.open(req, timeout=timeout) as resp:
                body = json.loads(resp.read())
            text = body["choices"][0]["message"]["content"]
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Feds2rError(
                f"cannot reach the LLM endpoint {endpoint}: {reason}. Check --llm-url (an "
                "OpenAI-compatible server) or use the built-in prompts (--prompts builtin)"
            ) from None
        except (KeyError, IndexError, json.JSONDecodeError) as exc:
            raise Feds2rError(
                f"the LLM endpoint {endpoint} answered in an unexpected format: {exc!r}"
            ) from None
        lines = [
            re.sub(r"^\s*(\d+[.)]|[-*•])\s*", "", ln).strip().strip('"') for ln in text.splitlines()
        ]
        lines = [ln for ln in lines if ln][:n]
        if not lines:
            raise Feds2rError(f"the LLM endpoint {endpoint} returned no prompts for {cls!r}")
        while len(lines) < n:  # too few lines: reuse them
            lines.append(lines[len(lines) % max(len(lines), 1)])
        for line in lines:
            out.append(Prompt(line, (cls,), *_scene_from_text(line)))
    return out
