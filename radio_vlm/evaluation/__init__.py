"""The paper's benchmark of a vision model (AM-RADIO Table 1 outside LLaVA), for any RADIO, official or distilled.

One module per protocol, each a `radio-vlm eval <protocol>` command that writes OUT/metrics.json:

- `knn`: k-NN top-1/top-5 on summary vectors (k = 20, exp(s / 0.07) votes), ImageFolder train/val;
- `zero_shot`: an adaptor's summary against the teacher's own text tower (open_clip or HF CLIP/SigLIP),
  top-1/top-5 and agreement with the teacher's image tower;
- `seg_probe`: BatchNorm + 1x1 conv on frozen features, poly-schedule AdamW, slide evaluation, mIoU
  (ADE20k and VOC conventions);
- `sam`: segment_anything's prompt encoder and mask decoder on the `sam` adaptor's features, COCO
  box prompts, instance mIoU (EfficientViT-SAM's protocol) and agreement with the teacher SAM;
- `report`: several runs side by side (markdown + PNG).

open_clip, segment_anything, torchmetrics and pycocotools are imported where a protocol needs them.
"""
