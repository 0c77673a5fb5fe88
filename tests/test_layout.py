"""mudi.generate.layout: automatic slots, relative sizes, layout files, and the LLM provider against a
fake OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from mudi.errors import MudiError
from mudi.generate.layout import (
    LayoutBox,
    LayoutWarning,
    auto_layout,
    fit_layout,
    layout_to_json,
    load_layout_file,
)
from mudi.geometry import fit_box
from mudi.generate.llm_layout import LayoutProviderError, LLMLayoutProvider, llm_layout, parse_llm_boxes

S = 512
DIMS = [("a", (100, 200)), ("b", (300, 150)), ("c", (50, 50))]
KEYS = {"a": "a", "olis": "a", "olis corgi": "a", "b": "b", "hta": "b", "hta chow chow": "b"}


def resolve(name: str) -> str:
    if name not in KEYS:
        raise MudiError(f"unknown subject {name!r}")
    return KEYS[name]


# ------------------------------------------------------------------------------ automatic

@pytest.mark.parametrize("k", [1, 2, 3])
def test_auto_layout_slots_fit_and_aspect(k):
    subjects = DIMS[:k]
    layout = auto_layout(subjects, S, S, rng=0, jitter=0.0, shuffle=False)
    assert [p.key for p in layout] == [key for key, _ in subjects]
    slot = S / k
    for j, (p, (_, (w, h))) in enumerate(zip(layout, subjects)):
        x0, y0, x1, y1 = p.box
        bw, bh = x1 - x0, y1 - y0
        # inside its own slot and the canvas
        assert j * slot - 1 <= x0 < x1 <= (j + 1) * slot + 1
        assert 0 <= y0 < y1 <= S
        # the mask box scaled to fit the slot x 0.8 (one side touches 0.8 of the slot limit)
        expected_scale = 0.8 * min(slot / w, S / h)
        assert bw == pytest.approx(w * expected_scale, abs=1)
        assert bh == pytest.approx(h * expected_scale, abs=1)
        # centred without jitter
        assert (x0 + x1) / 2 == pytest.approx(slot * (j + 0.5), abs=1)
        assert (y0 + y1) / 2 == pytest.approx(S / 2, abs=1)


def test_auto_layout_is_seeded_random_order_and_jitter():
    subjects = DIMS[:2]
    assert auto_layout(subjects, S, S, rng=7) == auto_layout(subjects, S, S, rng=7)
    orders = {tuple(p.key for p in auto_layout(subjects, S, S, rng=s)) for s in range(30)}
    assert orders == {("a", "b"), ("b", "a")}
    centres = {auto_layout(subjects, S, S, rng=s)[0].box for s in range(10)}
    assert len(centres) > 2  # jitter moves the boxes
    for s in range(30):
        for p in auto_layout(subjects, S, S, rng=s, jitter=0.05):
            x0, y0, x1, y1 = p.box
            assert 0 <= x0 < x1 <= S and 0 <= y0 < y1 <= S


def test_auto_layout_relative_sizes():
    subjects = DIMS[:2]
    layout = auto_layout(subjects, S, S, rng=1, sizes={"a": 1.0, "b": 0.5}, shuffle=False, jitter=0.0)
    (xa0, ya0, xa1, ya1), (xb0, yb0, xb1, yb1) = layout[0].box, layout[1].box
    assert (yb1 - yb0) / (ya1 - ya0) == pytest.approx(0.5, abs=0.02)
    assert ya1 == pytest.approx(yb1, abs=1)  # common ground line
    # aspect ratios kept
    assert (xa1 - xa0) / (ya1 - ya0) == pytest.approx(100 / 200, abs=0.02)
    assert (xb1 - xb0) / (yb1 - yb0) == pytest.approx(300 / 150, abs=0.05)
    with pytest.raises(MudiError, match="relative sizes"):
        auto_layout(subjects, S, S, sizes={"a": 1.0})
    with pytest.raises(MudiError, match="positive"):
        auto_layout(subjects, S, S, sizes={"a": 1.0, "b": -1})


# ------------------------------------------------------------------------------- files

def write(tmp_path, obj, name="layout.json"):
    p = tmp_path / name
    p.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return p


def test_layout_file_formats(tmp_path):
    boxes = [{"key": "olis", "box": [10, 20, 200, 400]}, {"key": "hta chow chow", "box": [250, 50, 500, 450]}]
    got = load_layout_file(write(tmp_path, boxes), S, S, ["a", "b"], resolve)
    assert got == [("a", (10, 20, 200, 400)), ("b", (250, 50, 500, 450))]
    got = load_layout_file(write(tmp_path, {"b": [0, 0, 10, 10], "a": [20, 20, 40, 40]}), S, S, ["a", "b"], resolve)
    assert got == [("b", (0, 0, 10, 10)), ("a", (20, 20, 40, 40))]
    # boxes drawn for a 1024 canvas, rescaled to 512
    got = load_layout_file(write(tmp_path, {"size": 1024, "boxes": boxes}), S, S, ["a", "b"], resolve)
    assert got == [("a", (5, 10, 100, 200)), ("b", (125, 25, 250, 225))]
    # fitted to the photos' aspect ratios
    fitted = fit_layout(got, {"a": (50, 100), "b": (125, 200)})
    assert fitted == [LayoutBox("a", fit_box((5, 10, 100, 200), (50, 100))),
                      LayoutBox("b", fit_box((125, 25, 250, 225), (125, 200)))]
    assert layout_to_json(fitted)[0] == {"key": "a", "box": list(fitted[0].box)}


@pytest.mark.parametrize(
    "obj, match",
    [
        ([{"key": "a", "box": [10, 20, 600, 400]}, {"key": "b", "box": [0, 0, 5, 5]}], "outside the 512x512 canvas"),
        ([{"key": "a", "box": [-1, 20, 60, 400]}, {"key": "b", "box": [0, 0, 5, 5]}], "outside"),
        ([{"key": "a", "box": [10, 20, 60, 400]}], r"no box for \['b'\]"),
        ([{"key": "a", "box": [1, 2, 3, 4]}, {"key": "b", "box": [1, 2, 3, 4]}, {"key": "c", "box": [1, 2, 3, 4]}],
         "unknown subject 'c'"),
        ([{"key": "a", "box": [10, 20, 5, 400]}, {"key": "b", "box": [0, 0, 5, 5]}], "empty"),
        ([{"key": "a", "box": [10, 20]}, {"key": "b", "box": [0, 0, 5, 5]}], "4 numbers"),
        ([{"key": "a", "box": [1, 2, 3, 4]}, {"key": "olis", "box": [1, 2, 3, 4]}], "more than one box"),
        ("{not json", "not valid JSON"),
        (42, "expected a list"),
    ],
)
def test_layout_file_errors_name_the_file(tmp_path, obj, match):
    path = write(tmp_path, obj)
    with pytest.raises(MudiError, match=match) as info:
        load_layout_file(path, S, S, ["a", "b"], resolve)
    assert str(path) in str(info.value)


def test_layout_file_wrong_subjects_for_prompt(tmp_path):
    path = write(tmp_path, [{"key": "a", "box": [1, 2, 30, 40]}, {"key": "b", "box": [1, 2, 30, 40]}])
    with pytest.raises(MudiError, match="which the prompt does not name") as info:
        load_layout_file(path, S, S, ["a"], resolve, prompt="a photo of olis corgi")
    assert "a photo of olis corgi" in str(info.value)
    with pytest.raises(MudiError, match="not found"):
        load_layout_file(tmp_path / "missing.json", S, S, ["a"], resolve)


# --------------------------------------------------------------------------------- LLM

class FakeLLM:
    """A tiny OpenAI-compatible chat server on 127.0.0.1 (port chosen by the OS)."""

    def __init__(self):
        self.reply: str | None = None  # message content to return
        self.raw: bytes | None = None  # raw body instead of a chat completion
        self.status = 200
        self.delay = 0.0
        self.requests: list[tuple[str, dict, dict]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append((self.path, dict(self.headers), body))
                if fake.delay:
                    time.sleep(fake.delay)
                payload = fake.raw if fake.raw is not None else json.dumps(
                    {"id": "x", "object": "chat.completion",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": fake.reply}}]}
                ).encode()
                try:
                    self.send_response(fake.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def llm_server():
    fake = FakeLLM()
    yield fake
    fake.close()


SUBJ = [("a", "olis corgi", (100, 200)), ("b", "hta chow chow", (300, 150))]


def provider(url, timeout=2.0):
    return LLMLayoutProvider(url=url, model="fake-model", api_key="sk-test", timeout=timeout)


def test_llm_good_answer(llm_server):
    llm_server.reply = (
        "Here you go:\n```json\n"
        '{"boxes": [{"subject": "olis corgi", "box": [20, 100, 240, 480]},'
        ' {"subject": "hta chow chow", "box": [260, 150, 500, 470]}]}\n```'
    )
    layout, source = llm_layout(provider(llm_server.url + "/v1"), "olis corgi and hta chow chow on a sofa", SUBJ, S, S, rng=0)
    assert source == "llm"
    assert [p.key for p in layout] == ["a", "b"]
    assert layout[0].box == fit_box((20, 100, 240, 480), (100, 200))
    assert layout[1].box == fit_box((260, 150, 500, 470), (300, 150))
    path, headers, body = llm_server.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "fake-model"
    user = body["messages"][-1]["content"]
    assert "olis corgi and hta chow chow on a sofa" in user and "hta chow chow" in user and "512" in user


def test_llm_normalized_and_by_identifier():
    got = parse_llm_boxes('[{"subject": "olis", "box": [0.0, 0.5, 0.5, 1.0]}, {"key": "b", "box": [256, 0, 512, 256]}]',
                          {"a": "olis corgi", "b": "hta chow chow"}, S, S)
    assert got == [("a", (0, 256, 256, 512)), ("b", (256, 0, 512, 256))]


@pytest.mark.parametrize(
    "reply",
    [
        "I cannot do that.",
        '{"boxes": [{"subject": "olis corgi", "box": [20, 100, 240, 480]}]}',  # a subject missing
        '{"boxes": [{"subject": "a cat", "box": [20, 100, 240, 480]}, {"subject": "hta chow chow", "box": [1,2,3,4]}]}',
        '{"boxes": [{"subject": "olis corgi", "box": [20, 100]}, {"subject": "hta chow chow", "box": [1,2,30,40]}]}',
        '{"boxes": [{"subject": "olis corgi", "box": [600, 600, 700, 700]}, {"subject": "hta chow chow", "box": [1,2,30,40]}]}',
    ],
)
def test_llm_malformed_answer_falls_back(llm_server, reply):
    llm_server.reply = reply
    with pytest.warns(LayoutWarning, match="using the automatic layout"):
        layout, source = llm_layout(provider(llm_server.url), "olis corgi and hta chow chow", SUBJ, S, S, rng=3)
    assert source.startswith("auto (llm failed")
    assert layout == auto_layout([(k, wh) for k, _, wh in SUBJ], S, S, np.random.default_rng(3))


def test_llm_not_a_chat_completion_and_http_error(llm_server):
    llm_server.raw = b"<html>oops</html>"
    with pytest.raises(LayoutProviderError, match="OpenAI-style"):
        provider(llm_server.url).propose("p", {"a": "olis corgi"}, S, S)
    llm_server.raw = b'{"error": "boom"}'
    llm_server.status = 500
    with pytest.warns(LayoutWarning, match="HTTP 500"):
        _, source = llm_layout(provider(llm_server.url), "p", SUBJ, S, S, rng=0)
    assert source.startswith("auto")


def test_llm_timeout_falls_back_quickly(llm_server):
    llm_server.reply = '{"boxes": []}'
    llm_server.delay = 1.5
    start = time.monotonic()
    with pytest.warns(LayoutWarning, match="no answer .* within 0.3 s"):
        layout, source = llm_layout(provider(llm_server.url, timeout=0.3), "p", SUBJ, S, S, rng=0)
    assert time.monotonic() - start < 1.4
    assert source.startswith("auto") and len(layout) == 2


def test_llm_unreachable_falls_back():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.warns(LayoutWarning, match="cannot reach"):
        _, source = llm_layout(provider(f"http://127.0.0.1:{port}", timeout=1.0), "p", SUBJ, S, S, rng=0)
    assert source.startswith("auto")


def test_llm_provider_from_env():
    env = {"MUDI_LLM_URL": "http://127.0.0.1:9/v1", "MUDI_LLM_MODEL": "m", "MUDI_LLM_API_KEY": "k"}
    p = LLMLayoutProvider.from_env(env=env)
    assert (p.endpoint, p.model, p.api_key) == ("http://127.0.0.1:9/v1/chat/completions", "m", "k")
    p = LLMLayoutProvider.from_env(url="http://h:1", model="x", env=env)
    assert (p.endpoint, p.model) == ("http://h:1/v1/chat/completions", "x")
    p = LLMLayoutProvider.from_env(env={"OPENAI_API_KEY": "k2"})
    assert p.endpoint == "https://api.openai.com/v1/chat/completions" and p.model == "gpt-4o-mini"
    p = LLMLayoutProvider.from_env(env={"OPENAI_BASE_URL": "http://h:2/v1/chat/completions", "OPENAI_MODEL": "y"})
    assert p.endpoint == "http://h:2/v1/chat/completions"
    with pytest.raises(MudiError, match="MUDI_LLM_URL"):
        LLMLayoutProvider.from_env(env={})
    with pytest.raises(MudiError, match="MUDI_LLM_MODEL"):
        LLMLayoutProvider.from_env(env={"MUDI_LLM_URL": "http://h:3"})
