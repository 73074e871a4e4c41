"""Optional integrations with the tools researchers already use: Hugging Face transformers
(`lrt[hf]`) and lm-evaluation-harness (`lrt[eval]`). The core package never imports them."""
