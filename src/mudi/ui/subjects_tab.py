"""Tab 1, Subjects: name 2-5 subjects, upload their photos, get a subject set with masks.

The page only gathers inputs; :func:`mudi.prepare` makes the set (masks from uploaded mask
files, boxes drawn or typed in the page, the preset's detector, or GrabCut/SAM) and its contact
sheet. A bad mask is fixed by uploading a mask named like the photo, drawing its box on the
photo, or clicking one of the segmenter's candidate masks (SAM gives three; it becomes that photo's
uploaded mask), and building again with *Replace* ticked.
"""

from __future__ import annotations

import json
from pathlib import Path

from mudi.errors import MudiError
from mudi.io import write_bytes_atomic
from mudi.ui import canvas
from mudi.ui.common import AppContext, guarded, need, ok
from mudi.ui.workspace import check_name, check_upload, replace_folder, store_uploads

MAX_SUBJECTS = 5
CLASS_HINT = ("descriptive class, e.g. 'corgi dog' rather than 'dog' (the detector looks for it, "
              "and a precise class keeps similar subjects apart)")


def subject_rows(values: list) -> list[tuple[str, str, list[str]]]:
    """(identifier, class, photo paths) of the filled rows; a half-filled row is a MudiError."""
    rows = []
    for i in range(MAX_SUBJECTS):
        ident, cls, photos = values[3 * i: 3 * i + 3]
        ident, cls, photos = (ident or "").strip(), " ".join((cls or "").split()), list(photos or [])
        if not (ident or cls or photos):
            continue
        where = f"subject {i + 1}"
        if not ident or " " in ident:
            raise MudiError(f"{where}: give a one-word identifier (a rare token such as 'olis').")
        if not cls:
            raise MudiError(f"{where}: give its class ({CLASS_HINT}).")
        if not photos:
            raise MudiError(f"{where} ({ident} {cls}): upload at least one photo.")
        rows.append((ident, cls, photos))
    if not 2 <= len(rows) <= MAX_SUBJECTS:
        raise MudiError(f"fill in 2 to {MAX_SUBJECTS} subjects (got {len(rows)}).")
    idents = [r[0] for r in rows]
    if len(set(idents)) != len(idents):
        raise MudiError("two subjects share an identifier; give each its own.")
    return rows


def parse_boxes(text: str) -> dict:
    """The boxes typed in the page: ``{"photo.png": [x0, y0, x1, y1]}`` (empty text = none)."""
    if not (text or "").strip():
        return {}
    try:
        boxes = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MudiError(f"boxes: not valid JSON ({exc.msg}); write {{\"photo.png\": [x0, y0, x1, y1]}}.") from None
    if not isinstance(boxes, dict):
        raise MudiError("boxes: write an object like {\"photo.png\": [x0, y0, x1, y1]}.")
    return boxes


def build_subject_set(ctx: AppContext, name: str, values: list, masks: list | None, boxes_text: str,
                      replace: bool):
    """Check the inputs and uploads, then run :func:`mudi.prepare`; returns its PrepareReport."""
    import mudi

    name = check_name(name, "subject-set name")
    out = ctx.ws.path("subjects", name, "subject-set name")
    if out.is_dir() and any(out.iterdir()) and not replace:
        raise MudiError(f"a subject set named {name!r} exists; tick 'Replace' to rebuild it, or choose another name.")
    rows = subject_rows(values)
    boxes = parse_boxes(boxes_text)
    # every upload is checked before anything is written
    names = [check_upload(p, ctx.max_bytes)[0] for _, _, photos in rows for p in photos]
    if len(set(names)) != len(names):
        raise MudiError("two photos have the same file name; rename one (masks and boxes are matched by name).")
    for m in masks or []:
        check_upload(m, ctx.max_bytes)
    uploads = ctx.ws.path("uploads", name)
    replace_folder(uploads)  # the app's own copy of the previous uploads of this set
    specs = []
    for ident, cls, photos in rows:
        folder = uploads / ident
        store_uploads(photos, folder, ctx.max_bytes, f"{ident} photos")
        specs.append(f"{ident} {cls}={folder}")
    extra: dict = {}
    if masks:
        extra["masks"] = str(store_uploads(masks, uploads / "_masks", ctx.max_bytes, "masks")[0].parent)
    if boxes:
        (uploads / "_boxes.json").write_text(json.dumps(boxes), encoding="utf-8")
        extra["boxes"] = str(uploads / "_boxes.json")
    preset = ctx.preset
    if preset.segmenter:
        extra["segmenter"] = preset.segmenter
    config = mudi.PrepareConfig(subjects=specs, out=str(out), **extra)
    return mudi.prepare(config, ctx.options(overwrite=replace), detector=_detector(preset.detector))


def _detector(name: str):
    """The preset's detector object for a registry name (``None`` = PrepareConfig's own OWLv2)."""
    if not name:
        return None
    from mudi.evaluate.registry import DETECTORS

    return DETECTORS.build(name, option="preset detector", device="cpu", batch_size=1, nms_iou=0.5)


def uploaded_photos(ctx: AppContext, name: str) -> dict[str, Path]:
    """Photo file name → its uploaded copy, for the subject set ``name`` (empty before a build)."""
    folder = ctx.ws.path("uploads", check_name(name, "subject-set name"))
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.glob("*/*")) if p.parent.name != "_masks" and p.is_file()}


def box_canvas(ctx: AppContext, name: str, photo: str) -> str:
    """The canvas JSON to draw ``photo``'s box on (starting from the box prepare used, if any)."""
    from PIL import Image

    path = uploaded_photos(ctx, name).get(photo)
    if path is None:
        raise MudiError(f"{photo!r}: no such uploaded photo in subject set {name!r}; build the set first.")
    with Image.open(path) as img:
        size = img.size
    return canvas.photo_canvas(f"/gradio_api/file={path}", size, _used_box(ctx, name, photo), photo)


def _used_box(ctx: AppContext, name: str, photo: str) -> list | None:
    """The box prepare used for ``photo`` (its prepare.json), or None."""
    report = ctx.ws.path("subjects", name) / "prepare.json"
    if not report.is_file():
        return None
    rows = [r for r in json.loads(report.read_text(encoding="utf-8")).get("photos", [])
            if Path(str(r.get("photo", ""))).name == photo]
    return rows[0].get("box") if rows else None


def show_candidates(ctx: AppContext, name: str, photo: str, boxes_text: str) -> list[tuple[str, str]]:
    """Segment ``photo`` in its box (typed/drawn, else the one prepare used, else the whole photo) and
    save the segmenter's candidate masks with overlays; returns the gallery's (overlay, caption) list."""
    from mudi.io import load_rgb, mask_to_image, save_image_atomic
    from mudi.prepare import mask_candidates
    from mudi.viz import outline_mask

    path = uploaded_photos(ctx, name).get(need(photo, "a photo"))
    if path is None:
        raise MudiError(f"{photo!r}: no such uploaded photo in subject set {name!r}; build the set first.")
    image = load_rgb(path)
    box = parse_boxes(boxes_text).get(photo) or _used_box(ctx, name, photo) or [0, 0, image.width, image.height]
    masks, scores = mask_candidates(image, box, ctx.preset.segmenter or None, device=ctx.config.device)
    folder = ctx.ws.path("candidates", name) / check_name(Path(photo).stem, "photo")
    replace_folder(folder)
    gallery = []
    for k, (mask, score) in enumerate(zip(masks, scores)):
        save_image_atomic(mask_to_image(mask), folder / f"mask_{k}.png")
        overlay = save_image_atomic(outline_mask(image, mask), folder / f"overlay_{k}.png")
        gallery.append((str(overlay), f"candidate {k + 1}" + ("" if score != score else f" (IoU {score:.2f})")))
    return gallery


def choose_candidate(ctx: AppContext, name: str, photo: str, k: int, masks: list | None) -> list[str]:
    """Candidate ``k`` of ``photo`` becomes its uploaded mask: the mask-upload list with any earlier mask
    of that photo replaced (the next build with Replace uses it, as for a mask the user uploaded)."""
    folder = ctx.ws.path("candidates", name) / check_name(Path(need(photo, "a photo")).stem, "photo")
    source = folder / f"mask_{int(k)}.png"
    if not source.is_file():
        raise MudiError(f"{photo}: no candidate {int(k) + 1}; press 'Show the segmenter's candidate masks' first.")
    stem = Path(photo).stem
    chosen = ctx.ws.path("candidates", name) / "_chosen" / f"{stem}.png"
    chosen.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(chosen, source.read_bytes())
    keep = [str(m) for m in masks or [] if Path(str(m)).stem not in (stem, f"mask_{stem}")]
    return keep + [str(chosen)]


def add_box(boxes_text: str, photo: str, value: str) -> str:
    """The boxes JSON with ``photo``'s box set to the one dragged on the canvas."""
    boxes = parse_boxes(boxes_text)
    boxes[need(photo, "a photo")] = canvas.photo_box(value)
    return json.dumps(boxes)


def report_outputs(report) -> tuple[str, str, str]:
    """(status, contact-sheet path, failures as Markdown) of a PrepareReport."""
    sset = report.subject_set
    n = sum(len(s.photos) for s in sset.subjects)
    phrases = ", ".join(s.phrase for s in sset.subjects)
    status = ok(f"subject set {report.out.name}: {n} photos of {phrases}; {len(report.failures)} failed.")
    if report.failures:
        lines = [f"- **{Path(str(r.path)).name}** ({r.phrase}): {r.reason}" for r in report.failures]
        failed = "**Photos left out** (fix by uploading a mask named like the photo or typing its box, then "
        failed += "build again with Replace):\n" + "\n".join(lines)
    else:
        failed = "Every photo got a mask."
    return status, str(report.out / "contact_sheet.png"), failed


def build(ctx: AppContext) -> dict:
    """Lay out the tab; returns the components other tabs refresh from."""
    import gradio as gr

    gr.Markdown("Name 2-5 subjects (an identifier word + " + CLASS_HINT + ") and upload their photos. "
                f"Masks: {_mask_source(ctx)}.")
    name = gr.Textbox("my-subjects", label="subject-set name", elem_id="subjects-name")
    inputs = []
    for i in range(MAX_SUBJECTS):
        with gr.Row(visible=True) if i < 2 else gr.Accordion(f"subject {i + 1} (optional)", open=False):
            inputs += [gr.Textbox(label=f"subject {i + 1}: identifier", elem_id=f"subject-{i}-id", scale=1),
                       gr.Textbox(label="class", elem_id=f"subject-{i}-class", scale=1),
                       gr.File(label="photos", file_count="multiple", file_types=["image"], type="filepath",
                               elem_id=f"subject-{i}-photos", scale=2)]
    with gr.Accordion("fix masks: upload masks or type boxes", open=False):
        masks = gr.File(label="masks named like the photos (NAME.png or mask_NAME.png; white = subject)",
                        file_count="multiple", file_types=["image"], type="filepath", elem_id="subject-masks")
        with gr.Row():
            with gr.Column():
                photo = gr.Dropdown(choices=[], label="photo to draw a box on (after a build)",
                                    elem_id="subjects-box-photo")
                use = gr.Button("Use this box", elem_id="subjects-box-use")
            board = gr.HTML("", html_template=canvas.TEMPLATE, css_template=canvas.CSS, js_on_load=canvas.JS,
                            elem_id="subjects-box-canvas")
        boxes = gr.Textbox(label='boxes: {"photo.png": [x0, y0, x1, y1]} (pixels)', lines=2, elem_id="subject-boxes")
        show = gr.Button("Show the segmenter's candidate masks for this photo", elem_id="subjects-candidates-show")
        cands = gr.Gallery(label="candidates: click one to use it as this photo's mask", columns=3, height="auto",
                           allow_preview=False, object_fit="contain", elem_id="subjects-candidates")
    replace = gr.Checkbox(False, label="Replace a subject set of the same name", elem_id="subjects-replace")
    go = gr.Button("Build subject set", variant="primary", elem_id="subjects-build")
    status = gr.HTML(elem_id="subjects-status")
    sheet = gr.Image(label="masks (contact sheet)", type="filepath", interactive=False, elem_id="subjects-sheet")
    failed = gr.Markdown(elem_id="subjects-failed")

    @guarded(3)
    def on_build(name_value, *values):
        report = build_subject_set(ctx, name_value, list(values[:-3]), values[-3], values[-2], values[-1])
        return report_outputs(report)

    go.click(on_build, [name, *inputs, masks, boxes, replace], [status, sheet, failed]).then(
        lambda n: gr.update(choices=list(_photo_names(ctx, n))), name, photo)
    photo.change(guarded(2)(lambda n, p: (ok(f"drag the box of {p}, then press 'Use this box'"),
                                          box_canvas(ctx, n, p))), [name, photo], [status, board])
    use.click(guarded(2)(lambda b, p, v: (ok(f"box of {p} set; build again with Replace"), add_box(b, p, v))),
              [boxes, photo, board], [status, boxes])
    show.click(guarded(2)(lambda n, p, b: (ok(f"click the best mask of {p}"), show_candidates(ctx, n, p, b))),
               [name, photo, boxes], [status, cands])

    def on_pick(n, p, current, evt):
        chosen = choose_candidate(ctx, n, p, evt.index, current)
        return ok(f"candidate {evt.index + 1} is now the mask of {p}; build again with Replace"), chosen

    on_pick.__annotations__["evt"] = gr.SelectData  # a real class: Gradio passes the click by this hint
    cands.select(guarded(2)(on_pick), [name, photo, masks], [status, masks])
    return {"build": go}


def _photo_names(ctx: AppContext, name: str) -> list[str]:
    try:
        return list(uploaded_photos(ctx, name))
    except MudiError:
        return []


def _mask_source(ctx: AppContext) -> str:
    p = ctx.preset
    if p.detector and p.segmenter == "grabcut":
        return f"found by the {p.detector} detector and cut out with GrabCut (weight-free)"
    return "found by OWLv2 and cut out with SAM (they need the model files), or from masks you upload"


__all__ = ["MAX_SUBJECTS", "add_box", "box_canvas", "build", "build_subject_set", "choose_candidate", "parse_boxes",
           "report_outputs", "show_candidates", "subject_rows", "uploaded_photos"]
