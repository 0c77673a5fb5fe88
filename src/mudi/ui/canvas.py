"""The layout canvas of the Generate tab: one box per subject, dragged and resized with the mouse.

Its value is JSON in the format ``mudi generate --layout FILE`` reads:
``{"size": [W, H], "boxes": {"KEY": [x0, y0, x1, y1], ...}, "labels": {"KEY": "phrase"}}``; the
Subjects tab uses the same canvas over a photo (``"background"``) to draw a subject's box. The
browser code only moves boxes and writes that JSON back; the boxes are checked by
:mod:`mudi.generate`'s layout reader when the images are made.
"""

from __future__ import annotations

import json

#: Canvas side in the page (pixels); the boxes are stored in this frame and rescaled by generate.
SIDE = 320
COLORS = ("#ff0040", "#008cff", "#00b43c", "#ff9600", "#aa00ff")

TEMPLATE = '<div class="mudi-canvas" style="width:{side}px;height:{side}px"></div>'.format(side=SIDE)

CSS = """
.mudi-canvas { position: relative; background: #f4f4f4; border: 1px solid #999; user-select: none; }
.mudi-box { position: absolute; border: 3px solid; box-sizing: border-box; cursor: move; font: 12px sans-serif;
            background: rgba(255,255,255,0.35); }
.mudi-box span { position: absolute; left: 2px; top: 1px; pointer-events: none; }
.mudi-handle { position: absolute; right: -6px; bottom: -6px; width: 12px; height: 12px; background: #333;
               cursor: nwse-resize; }
"""

JS = """
const draw = () => {
  const root = element.querySelector('.mudi-canvas');
  if (!root) return;
  root.innerHTML = '';
  let data;
  try { data = JSON.parse(props.value || '{}'); } catch (e) { return; }
  root.style.backgroundImage = data.background ? 'url("' + data.background + '")' : 'none';
  root.style.backgroundSize = '100%% 100%%';
  const colors = %(colors)s;
  const keys = Object.keys(data.boxes || {});
  keys.forEach((key, i) => {
    const b = data.boxes[key];
    const box = document.createElement('div');
    box.className = 'mudi-box';
    box.dataset.key = key;
    box.style.borderColor = colors[i %% colors.length];
    const place = () => { const v = data.boxes[key];
      box.style.left = v[0] + 'px'; box.style.top = v[1] + 'px';
      box.style.width = (v[2] - v[0]) + 'px'; box.style.height = (v[3] - v[1]) + 'px'; };
    place();
    const label = document.createElement('span');
    label.textContent = (data.labels || {})[key] || key;
    box.appendChild(label);
    const handle = document.createElement('div');
    handle.className = 'mudi-handle';
    box.appendChild(handle);
    root.appendChild(box);
    box.addEventListener('pointerdown', (ev) => {
      ev.preventDefault();
      const resize = ev.target === handle;
      const x0 = ev.clientX, y0 = ev.clientY, start = data.boxes[key].slice();
      const side = %(side)d;
      const move = (e) => {
        const dx = e.clientX - x0, dy = e.clientY - y0;
        let v = start.slice();
        if (resize) {
          v[2] = Math.min(side, Math.max(v[0] + 8, start[2] + dx));
          v[3] = Math.min(side, Math.max(v[1] + 8, start[3] + dy));
        } else {
          const w = start[2] - start[0], h = start[3] - start[1];
          v[0] = Math.min(side - w, Math.max(0, start[0] + dx)); v[1] = Math.min(side - h, Math.max(0, start[1] + dy));
          v[2] = v[0] + w; v[3] = v[1] + h;
        }
        data.boxes[key] = v.map(Math.round);
        place();
      };
      const up = () => {
        window.removeEventListener('pointermove', move);
        window.removeEventListener('pointerup', up);
        props.value = JSON.stringify(data);
        trigger('change');
      };
      window.addEventListener('pointermove', move);
      window.addEventListener('pointerup', up);
    });
  });
};
draw();
watch('value', draw);
""" % {"colors": json.dumps(list(COLORS)), "side": SIDE}


def default_layout(phrases: dict[str, str]) -> str:
    """Side-by-side starting boxes for the subjects ``{key: phrase}`` (canvas JSON)."""
    keys = list(phrases)
    n = max(1, len(keys))
    slot = SIDE / n
    boxes = {}
    for i, key in enumerate(keys):
        w = 0.8 * slot
        x0 = i * slot + 0.1 * slot
        h = min(0.6 * SIDE, 1.2 * w)
        boxes[key] = [round(x0), round(SIDE * 0.9 - h), round(x0 + w), round(SIDE * 0.9)]
    return json.dumps({"size": [SIDE, SIDE], "boxes": boxes, "labels": dict(phrases)})


def photo_canvas(url: str, size: tuple[int, int], box: list[float] | None, label: str) -> str:
    """Canvas JSON showing a photo (stretched to the canvas) with one box to drag, given in photo
    pixels (``None``: the middle half of the photo)."""
    w, h = size
    box = box or [w / 4, h / 4, 3 * w / 4, 3 * h / 4]
    scaled = [round(box[0] * SIDE / w), round(box[1] * SIDE / h), round(box[2] * SIDE / w), round(box[3] * SIDE / h)]
    return json.dumps({"size": [w, h], "background": url, "boxes": {"box": scaled}, "labels": {"box": label}})


def photo_box(value: str) -> list[int]:
    """The dragged box of a :func:`photo_canvas`, back in photo pixels ``[x0, y0, x1, y1]``."""
    data = json.loads(value or "{}")
    (w, h), b = data["size"], data["boxes"]["box"]
    return [round(b[0] * w / SIDE), round(b[1] * h / SIDE), round(b[2] * w / SIDE), round(b[3] * h / SIDE)]


def layout_for(value: str, keys: list[str]) -> dict:
    """The canvas JSON reduced to the subjects ``keys`` (those the prompt names), for a layout file."""
    data = json.loads(value or "{}")
    boxes = {k: v for k, v in (data.get("boxes") or {}).items() if k in keys}
    return {"size": data.get("size", [SIDE, SIDE]), "boxes": boxes}


__all__ = ["CSS", "JS", "SIDE", "TEMPLATE", "default_layout", "layout_for", "photo_box", "photo_canvas"]
