"""Context backgrounds (EM-Paste §3.2, §4.1, appendix §7): caption the source images, rewrite
target-class words into distractors, generate images from the rewritten captions and keep the
ones CLIP likes best and finds free of target classes.

Modules: ``captions`` (model or COCO captions file), ``rewrite`` + ``vocabulary`` (Table 6),
``generate`` (diffusers), ``select`` (CLIP), ``run`` (the stage). Only the model modules
import torch / transformers / diffusers, and only inside functions.

May import: core, ops, structures, io, models.
"""

# Default model ids (hub); every one can be replaced by a local folder on the command line.
DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"
DEFAULT_GENERATOR = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_CLIP = "openai/clip-vit-base-patch32"
CAPTIONER_FLAG, GENERATOR_FLAG, CLIP_FLAG = "--captioner", "--generator", "--clip"
DISTRACTORS_FLAG, CAPTIONS_FLAG = "--distractors", "--captions"
# The flags of the models' and files' options, declared with them in ``run`` (``flag=``) and
# named here so that the modules ``run`` imports can name them without importing it.
