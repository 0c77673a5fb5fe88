"""The toy world as a ``mudi ui`` preset: ``mudi ui`` with no base model runs on it, offline."""

from __future__ import annotations

from mudi.toy import SAMPLING
from mudi.toy.demo import TOY_SUCCESS_THRESHOLD, DemoConfig, demo_resolution
from mudi.ui.presets import Preset


def toy_preset() -> Preset:
    """The shipped toy base model with the demo's measured settings (see mudi.toy.demo)."""
    from mudi.toy import base_model_path

    demo = DemoConfig()
    side = demo_resolution()
    return Preset(
        name="toy",
        base=str(base_model_path()),
        description=f"the toy world shipped with mudi ({side} px, trains on a CPU in minutes)",
        detector="toy",
        segmenter="grabcut",
        compose={"size": side},
        train={"resolution": side, "rank": demo.rank, "alpha": float(demo.rank), "learning_rate": demo.learning_rate,
               "max_train_steps": 200, "gradient_accumulation_steps": 1, "checkpoint_every": 25,
               "validate_every": 50, "validation_inference_steps": demo.steps, "validation_guidance_scale": demo.guidance,
               "validation_images": 1},
        generate={"resolution": side, "steps": demo.steps, "guidance": demo.guidance, "gamma": demo.gamma,
                  "fill": demo.fill, "dtype": "float32"},
        # class images: the toy base's sampling settings, its prompt grammar, the central box + GrabCut
        priors={"detector": "none", "segmenter": "grabcut", "prompt": "a photo of a {cls}, simple background",
                "negative_prompt": "", "steps": SAMPLING["num_inference_steps"],
                "guidance_scale": SAMPLING["guidance_scale"]},
        priors_note="The toy base draws rough blobs for 'a photo of a circle' (often two in one image): these are "
                    "the class images prior preservation trains with here.",
        evaluate={"detector": "toy", "embedder": "toy", "clip": "none", "success_threshold": TOY_SUCCESS_THRESHOLD},
    )
