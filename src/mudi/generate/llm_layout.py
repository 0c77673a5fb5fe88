"""Layouts proposed by a language model (METHOD.md §4, "LLM-guided layout").

:class:`LLMLayoutProvider` asks a model behind an OpenAI-compatible ``/v1/chat/completions``
endpoint for one box per subject; :func:`parse_llm_boxes` turns its answer into boxes (tolerating
code fences, prose, fractions of the canvas and slightly outside boxes); :func:`llm_layout`
falls back to :func:`~mudi.generate.layout.auto_layout` with a
:class:`~mudi.generate.layout.LayoutWarning` on any failure.
"""

from __future__ import annotations

import json
import os
import re
import socket
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from mudi.errors import MudiError
from mudi.generate.layout import Box, Layout, LayoutWarning, auto_layout, fit_layout

#: Seconds to wait for a language-model answer.
DEFAULT_LLM_TIMEOUT = 60.0

SYSTEM_PROMPT = (
    "You are a layout planner for a text-to-image model. Given an image prompt and the subjects "
    "it names, you place one bounding box per subject on a square canvas so that the scene looks "
    "natural: plausible relative sizes, subjects side by side and not overlapping much, each box "
    "fully inside the canvas. Answer with JSON only, no prose, in exactly this form: "
    '{"boxes": [{"subject": "<subject phrase>", "box": [x0, y0, x1, y1]}, ...]} '
    "with integer pixel coordinates, 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height."
)


class LayoutProviderError(Exception):
    """A language model did not produce a usable layout (network error, timeout, bad JSON)."""


@dataclass
class LLMLayoutProvider:
    """Boxes proposed by a language model behind an OpenAI-compatible chat endpoint.

    Args:
        url: base URL of the server (``http://host:port``, ``.../v1`` or the full
            ``.../v1/chat/completions``).
        model: model name sent in the request.
        api_key: sent as ``Authorization: Bearer <key>`` when given.
        timeout: seconds for the whole request (connect + answer).

    Use :meth:`from_env` to read ``MUDI_LLM_URL`` / ``MUDI_LLM_MODEL`` / ``MUDI_LLM_API_KEY``
    (or ``OPENAI_BASE_URL`` / ``OPENAI_MODEL`` / ``OPENAI_API_KEY``).
    """

    url: str
    model: str
    api_key: str | None = None
    timeout: float = DEFAULT_LLM_TIMEOUT
    temperature: float = 0.0

    @classmethod
    def from_env(
        cls,
        url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
    ) -> "LLMLayoutProvider":
        """A provider from explicit options, else the environment; MudiError when unset."""
        env = os.environ if env is None else env
        api_key = api_key or env.get("MUDI_LLM_API_KEY") or env.get("OPENAI_API_KEY") or None
        url = url or env.get("MUDI_LLM_URL") or env.get("OPENAI_BASE_URL") or env.get("OPENAI_API_BASE")
        if not url:
            if api_key:
                url = "https://api.openai.com/v1"
            else:
                raise MudiError(
                    "--layout llm needs a chat endpoint: pass --llm-url URL (an OpenAI-compatible server, "
                    "e.g. http://127.0.0.1:8000/v1) or set MUDI_LLM_URL (and MUDI_LLM_MODEL, MUDI_LLM_API_KEY)."
                )
        model = model or env.get("MUDI_LLM_MODEL") or env.get("OPENAI_MODEL")
        if not model:
            if "api.openai.com" in url:
                model = "gpt-4o-mini"
            else:
                raise MudiError("--layout llm needs a model name: pass --llm-model NAME or set MUDI_LLM_MODEL.")
        return cls(url=url, model=model, api_key=api_key, timeout=float(timeout or DEFAULT_LLM_TIMEOUT))

    @property
    def endpoint(self) -> str:
        """The chat-completions URL (``/v1/chat/completions`` added to a bare server URL)."""
        u = self.url.rstrip("/")
        if u.endswith("/chat/completions"):
            return u
        if re.search(r"/v\d+$", u):
            return u + "/chat/completions"
        return u + "/v1/chat/completions"

    def request_body(self, prompt: str, phrases: Sequence[str], width: int, height: int) -> dict[str, Any]:
        """The JSON body of the chat request: the system prompt, then the canvas, prompt and subjects."""
        user = (
            f"Canvas: width {width}, height {height} pixels.\n"
            f"Image prompt: {prompt}\n"
            "Subjects (one box each, use these exact phrases as \"subject\"): "
            + json.dumps(list(phrases))
        )
        return {
            "model": self.model,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}],
            "temperature": self.temperature,
        }

    def ask(self, prompt: str, phrases: Sequence[str], width: int, height: int) -> str:
        """Send the request; return the answer's text. Raises LayoutProviderError."""
        body = json.dumps(self.request_body(prompt, phrases, width, height)).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode("utf-8", "replace") if exc.fp else ""
            raise LayoutProviderError(f"HTTP {exc.code} from {self.endpoint}: {detail}") from None
        except (socket.timeout, TimeoutError):
            raise LayoutProviderError(f"no answer from {self.endpoint} within {self.timeout:g} s") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (socket.timeout, TimeoutError)):
                raise LayoutProviderError(f"no answer from {self.endpoint} within {self.timeout:g} s") from None
            raise LayoutProviderError(f"cannot reach {self.endpoint}: {reason}") from None
        except OSError as exc:
            raise LayoutProviderError(f"request to {self.endpoint} failed: {exc}") from None
        try:
            doc = json.loads(raw.decode("utf-8"))
            content = doc["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError):
            raise LayoutProviderError(
                f"{self.endpoint} did not return an OpenAI-style chat completion: {raw[:200]!r}"
            ) from None
        if not isinstance(content, str):
            raise LayoutProviderError(f"{self.endpoint} returned no text content.")
        return content

    def propose(
        self, prompt: str, phrases: Mapping[str, str], width: int, height: int
    ) -> list[tuple[str, Box]]:
        """Ask for boxes; return ``[(key, box), ...]`` for exactly the given subjects.

        ``phrases`` maps subject keys to the phrases shown to the model. Raises
        :class:`LayoutProviderError` on any failure (network, timeout, malformed answer).
        """
        content = self.ask(prompt, list(phrases.values()), width, height)
        return parse_llm_boxes(content, phrases, width, height)


def _extract_json(text: str) -> Any:
    """The first JSON object/array in a model answer (tolerates ``` fences and prose)."""
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    candidates = [fenced.group(1)] if fenced else []
    candidates.append(text)
    for cand in candidates:
        cand = cand.strip()
        try:
            return json.loads(cand)
        except ValueError:
            pass
        for opener in "{[":
            start = cand.find(opener)
            if start < 0:
                continue
            try:
                obj, _ = json.JSONDecoder().raw_decode(cand[start:])
                return obj
            except ValueError:
                continue
    raise LayoutProviderError(f"the answer contains no JSON: {text[:200]!r}")


def parse_llm_boxes(
    content: str, phrases: Mapping[str, str], width: int, height: int
) -> list[tuple[str, Box]]:
    """Parse a model's answer into ``[(key, box), ...]``; LayoutProviderError if unusable.

    Subjects may be named by phrase, identifier or key. Boxes in [0, 1] (all four numbers)
    are read as fractions of the canvas. Boxes slightly outside the canvas are clipped; a box
    that is empty after clipping is an error.
    """
    data = _extract_json(content)
    if isinstance(data, dict):
        data = data.get("boxes", data.get("layout", data))
    lookup: dict[str, str] = {}
    for key, phrase in phrases.items():
        for name in (key, phrase, phrase.split()[0] if phrase.split() else phrase):
            lookup[name.strip().lower()] = key
    items: list[tuple[Any, Any]] = []
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        for item in data:
            if not isinstance(item, dict):
                raise LayoutProviderError(f"box entry is not an object: {item!r}")
            name = item.get("subject", item.get("key", item.get("phrase", item.get("name"))))
            items.append((name, item.get("box", item.get("bbox"))))
    else:
        raise LayoutProviderError(f"unexpected JSON in the answer: {str(data)[:200]}")
    out: dict[str, Box] = {}
    for name, box in items:
        key = lookup.get(str(name).strip().lower()) if name is not None else None
        if key is None:
            raise LayoutProviderError(f"the answer names an unknown subject {name!r}")
        if (
            not isinstance(box, (list, tuple))
            or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in box)
        ):
            raise LayoutProviderError(f"bad box for {name!r}: {box!r}")
        b = [float(v) for v in box]
        if all(0.0 <= v <= 1.0 for v in b) and max(b) <= 1.0 and width > 1:
            b = [b[0] * width, b[1] * height, b[2] * width, b[3] * height]
        x0, y0 = max(0.0, b[0]), max(0.0, b[1])
        x1, y1 = min(float(width), b[2]), min(float(height), b[3])
        ib = (int(round(x0)), int(round(y0)), int(round(x1)), int(round(y1)))
        if ib[2] - ib[0] < 2 or ib[3] - ib[1] < 2:
            raise LayoutProviderError(f"box for {name!r} is empty or outside the canvas: {box!r}")
        if key in out:
            raise LayoutProviderError(f"two boxes for {name!r}")
        out[key] = ib
    missing = [k for k in phrases if k not in out]
    if missing:
        raise LayoutProviderError(f"no box for {[phrases[k] for k in missing]}")
    return [(k, out[k]) for k in phrases]


def llm_layout(
    provider: LLMLayoutProvider,
    prompt: str,
    subjects: Sequence[tuple[str, str, tuple[int, int]]],
    width: int,
    height: int,
    rng: np.random.Generator | int | None = None,
    **auto_kwargs: Any,
) -> tuple[Layout, str]:
    """LLM-proposed layout, or :func:`auto_layout` with a :class:`LayoutWarning` on failure.

    Args:
        subjects: ``(key, phrase, (w, h))`` per subject (phrase shown to the model; (w, h) the
            mask-box size used to fit the photo into the proposed box).

    Returns:
        ``(layout, source)`` with source ``"llm"`` or ``"auto (llm failed: ...)"``.
    """
    phrases = {key: phrase for key, phrase, _ in subjects}
    dims = {key: wh for key, _, wh in subjects}
    try:
        entries = provider.propose(prompt, phrases, width, height)
        return fit_layout(entries, dims), "llm"
    except LayoutProviderError as exc:
        warnings.warn(
            f"LLM layout failed for prompt {prompt!r} ({exc}); using the automatic layout instead.",
            LayoutWarning,
            stacklevel=2,
        )
        layout = auto_layout([(key, wh) for key, _, wh in subjects], width, height, rng, **auto_kwargs)
        return layout, f"auto (llm failed: {exc})"


__all__ = [
    "DEFAULT_LLM_TIMEOUT",
    "LLMLayoutProvider",
    "LayoutProviderError",
    "SYSTEM_PROMPT",
    "llm_layout",
    "parse_llm_boxes",
]
