"""`python -m llava_patch.run <llava module> <args...>`: run an entry point of the original LLaVA package
with RADIO installed (`llava_patch.install()`), e.g.

    python -m llava_patch.run llava.train.train_mem --vision_tower radio:/ckpt/radio-b:long_edge=432 ...
    python -m llava_patch.run llava.eval.model_vqa_loader --model-path ./checkpoints/llava-radio ...

The module runs as `__main__` with LLaVA's own arguments; flags transformers renamed since LLaVA's
scripts were written (`llava_patch.compat.RENAMED_FLAGS`) are passed under their new names. Flags before
the module name (`deepspeed --module llava_patch.run` puts `--local_rank=N` there) go to the module too.
"""

from __future__ import annotations

import runpy
import sys

from llava_patch.compat import rename_flags
from llava_patch.original import install


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # launchers put their own flags first: `deepspeed --module llava_patch.run ...` adds --local_rank=N
    position = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), None)
    if position is None:
        raise SystemExit(
            "usage: python -m llava_patch.run <llava module> [its arguments...], "
            "e.g. python -m llava_patch.run llava.train.train_mem --vision_tower radio:<path> ..."
        )
    module, args = argv[position], rename_flags(argv[:position] + argv[position + 1 :])
    install()
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
