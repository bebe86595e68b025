"""Evaluation as LLaVA-1.5 runs it: answer generation, chunk merging, and scorers equal to the official ones.

`radio-llava generate` writes LLaVA-format answer files, `radio-llava merge` joins chunks, and
`radio-llava score --benchmark {vqav2,textvqa,gqa,pope}` scores them (see `llava_patch.eval.score`).
"""
